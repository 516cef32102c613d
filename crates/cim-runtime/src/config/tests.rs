use super::*;
use std::collections::HashMap;

fn from(pairs: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::from_lookup(&move |k| map.get(k).cloned())
}

#[test]
fn defaults_are_valid_and_match_the_design_ports() {
    let c = from(&[]).unwrap();
    assert_eq!(c.listen(ServiceKind::Gateway).addr.port(), 8080);
    assert_eq!(c.listen(ServiceKind::Websocket).addr.port(), 8081);
    assert_eq!(c.listen(ServiceKind::Graph).addr.port(), 50051);
    assert_eq!(c.listen(ServiceKind::Agent).addr.port(), 50054);
    assert_eq!(c.listen(ServiceKind::Gateway).admin_addr.port(), 9100);
    assert_eq!(c.listen(ServiceKind::Agent).admin_addr.port(), 9105);
    assert_eq!(c.listen(ServiceKind::Webhook).addr.port(), 50055);
    assert_eq!(c.listen(ServiceKind::Webhook).admin_addr.port(), 9106);
    assert_eq!(c.subject_prefix.as_str(), "cim");
    assert_eq!(c.otlp_endpoint, None);
    assert_eq!(c.log_format, LogFormat::Json);
}

#[test]
fn a_bad_database_url_names_the_variable_and_hides_the_password() {
    let err = from(&[(CIM_DATABASE_URL, "mysql://root:hunter2@db/cim")]).unwrap_err();
    assert_eq!(err.0.len(), 1);
    let line = err.to_string();
    assert!(line.starts_with("invalid configuration: CIM_DATABASE_URL: expected a postgres:// URL"), "{line}");
    assert!(!line.contains("hunter2"), "{line}");
    assert!(line.contains("root:***@db"), "{line}");
    assert_eq!(line.lines().count(), 1);
}

#[test]
fn every_bad_variable_is_reported_once() {
    let err = from(&[
        (CIM_LOG_FORMAT, "xml"),
        (CIM_STREAM_REPLICAS, "7"),
        ("CIM_GRAPH_ADDR", "localhost"),
        (CIM_OTLP_ENDPOINT, "grpc collector"),
        (CIM_SUBJECT_PREFIX, "cim.>"),
    ])
    .unwrap_err();
    let vars: Vec<&str> = err.0.iter().map(|e| e.var.as_str()).collect();
    assert_eq!(vars, [CIM_LOG_FORMAT, CIM_OTLP_ENDPOINT, CIM_SUBJECT_PREFIX, CIM_STREAM_REPLICAS, "CIM_GRAPH_ADDR"]);
    assert_eq!(err.to_string().lines().count(), 5);
}

#[test]
fn values_are_parsed() {
    let c = from(&[
        (CIM_LOG_FORMAT, "pretty"),
        (CIM_DATABASE_URL, "postgres://u:p@h:5/db"),
        (CIM_NATS_URL, "nats://a:4222, nats://b:4222"),
        (CIM_SHUTDOWN_GRACE_MS, "1500"),
        (CIM_OTLP_ENDPOINT, "http://otel:4317"),
        ("CIM_GRAPH_ADDR", "127.0.0.1:0"),
    ])
    .unwrap();
    assert_eq!(c.log_format, LogFormat::Pretty);
    assert_eq!(c.database_url.expose(), "postgres://u:p@h:5/db");
    assert_eq!(format!("{:?}", c.database_url), "postgres://u:***@h:5/db");
    assert_eq!(c.shutdown_grace, Duration::from_millis(1500));
    assert_eq!(c.otlp_endpoint.as_deref(), Some("http://otel:4317"));
    assert_eq!(c.listen(ServiceKind::Graph).addr.port(), 0);
}

#[test]
fn object_store_locations_are_parsed_and_checked() {
    let local = from(&[]).unwrap().objects;
    assert_eq!(local.location, ObjectLocation::Local("data/objects".into()));
    assert!(local.s3_credentials.is_none());
    let c = from(&[
        (CIM_OBJECT_STORE_URL, "s3://cim-documents/tenants/a/"),
        (CIM_S3_ENDPOINT, "http://minio:9000"),
        (CIM_S3_ACCESS_KEY_ID, "cim"),
        (CIM_S3_SECRET_ACCESS_KEY, "hunter22"),
    ])
    .unwrap()
    .objects;
    assert_eq!(c.location, ObjectLocation::S3 { bucket: "cim-documents".into(), prefix: "tenants/a".into() });
    assert_eq!(c.s3_endpoint.as_deref(), Some("http://minio:9000"));
    assert_eq!(c.s3_credentials.as_ref().map(|(id, s)| (id.as_str(), s.expose())), Some(("cim", "hunter22")));
    let abs = from(&[(CIM_OBJECT_STORE_URL, "file:///srv/cim")]).unwrap().objects;
    assert_eq!(abs.location, ObjectLocation::Local("/srv/cim".into()));

    for bad in ["s3://Bad_Bucket", "s3://ab", "s3://b-ok/../x", "file://relative", "gs://bucket", "s3://bucket-/x"] {
        let err = from(&[(CIM_OBJECT_STORE_URL, bad)]).unwrap_err();
        assert_eq!(err.0[0].var, CIM_OBJECT_STORE_URL, "{bad}");
    }
    let err = from(&[(CIM_S3_ACCESS_KEY_ID, "cim")]).unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert_eq!(err.0[0].var, CIM_S3_SECRET_ACCESS_KEY);
    let err = from(&[(CIM_S3_SECRET_ACCESS_KEY, "hunter22"), (CIM_S3_ENDPOINT, "minio:9000")]).unwrap_err();
    let vars: Vec<&str> = err.0.iter().map(|e| e.var.as_str()).collect();
    assert_eq!(vars, [CIM_S3_ENDPOINT, CIM_S3_ACCESS_KEY_ID]);
    assert!(!err.to_string().contains("hunter22"));
}

#[test]
fn redaction_keeps_what_operators_need() {
    assert_eq!(redact_url("redis://:s3cret@cache:6379/0"), "redis://:***@cache:6379/0");
    assert_eq!(redact_url("postgres://app@db/cim?password=x"), "postgres://app@db/cim?password=***");
    assert_eq!(
        redact_url("postgres://app@db/cim?sslmode=require&sslpassword=x@y"),
        "postgres://app@db/cim?sslmode=require&sslpassword=***"
    );
    assert_eq!(redact_url("postgres://db:5432/cim"), "postgres://db:5432/cim");
    // A password typed raw with `/`, `?` or `@` in it is masked whole.
    assert_eq!(redact_url("postgres://app:pa/ss@db/cim"), "postgres://app:***@db/cim");
    assert_eq!(redact_url("postgres://app:p?a@s/s@db/cim"), "postgres://app:***@db/cim");
    // Something that is no URL at all may be a password in the wrong variable.
    assert_eq!(redact_url("garbage"), "<redacted: not a URL>");
    assert_eq!(redact_url(""), "");
    assert_eq!(redact_urls("nats://a:p1@h1:4222,nats:/b:p2@h2:4222"), "nats://a:***@h1:4222,nats:/b:***@h2:4222");
    assert_eq!(format!("{:?}", Secret::new("postgres://not:a@url")), "<redacted>");
    assert_eq!(format!("{:?}", Secret::url("postgres://u:p@h/db")), "postgres://u:***@h/db");
}

#[test]
fn a_malformed_url_shows_the_typo_but_not_the_password() {
    for (var, bad, shown) in [
        (CIM_DATABASE_URL, "postgres:/app:hunter2@db:5432/cim", "postgres:/app:***@db:5432/cim"),
        (CIM_DATABASE_URL, "postgres//app:hunter2@db:5432/cim", "postgres//app:***@db:5432/cim"),
        (CIM_DATABASE_URL, "postgresql:app:hunter2@db/cim", "postgresql:app:***@db/cim"),
        (CIM_DATABASE_URL, "postgres://app:hunter2@/cim", "postgres://app:***@/cim"),
        (CIM_REDIS_URL, "redis//:hunter2@cache:6379", "redis//:***@cache:6379"),
        (CIM_NATS_URL, "nats://u:hunter2@a:4222,nat://u:hunter2@b:4222", "nats://u:***@a:4222,nat://u:***@b:4222"),
    ] {
        let err = from(&[(var, bad)]).unwrap_err();
        let line = err.to_string();
        assert_eq!(err.0.len(), 1, "{line}");
        assert!(line.ends_with(&format!("got {shown:?}")), "{bad}: {line}");
        assert!(!line.contains("hunter2"), "{line}");
    }
    // A key is never shown, not even in part.
    let err = from(&[(CIM_JWT_HS256_SECRET, "short://hunter2@x")]).unwrap_err();
    assert!(err.to_string().ends_with("got \"<redacted>\""), "{err}");
}

#[test]
fn the_data_directory_follows_xdg_unless_set() {
    let dir = |pairs: &[(&str, &str)]| from(pairs).map(|c| c.data_dir);
    assert_eq!(dir(&[("HOME", "/home/ann")]).unwrap(), Some("/home/ann/.local/share/cim".into()));
    assert_eq!(dir(&[("HOME", "/home/ann"), ("XDG_DATA_HOME", "/data/ann")]).unwrap(), Some("/data/ann/cim".into()));
    // The XDG spec: a relative XDG_DATA_HOME is ignored.
    assert_eq!(
        dir(&[("HOME", "/home/ann"), ("XDG_DATA_HOME", "data")]).unwrap(),
        Some("/home/ann/.local/share/cim".into())
    );
    assert_eq!(dir(&[("HOME", "/home/ann"), (CIM_DATA_DIR, "/srv/cim")]).unwrap(), Some("/srv/cim".into()));
    assert_eq!(dir(&[]).unwrap(), None);
    let c = from(&[(CIM_DATA_DIR, "/srv/cim")]).unwrap();
    assert_eq!(c.local_secret_file(), Some("/srv/cim/jwt-hs256-secret".into()));
    // Relative to what? Each shell has its own working directory.
    let err = from(&[(CIM_DATA_DIR, "cim-data")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: CIM_DATA_DIR: expected an absolute directory path, got \"cim-data\""
    );
}

#[test]
fn describe_says_unset_for_a_secret_nobody_set() {
    let env: HashMap<&str, &str> = HashMap::from([("HOME", "/home/ann"), (CIM_REDIS_URL, "redis://:pw@cache:6379")]);
    let lines = Config::describe(&|k| env.get(k).map(|v| v.to_string()));
    let line = |name: &str| lines.iter().find(|d| d.name == name).unwrap().clone();
    assert_eq!(
        line(CIM_JWT_HS256_SECRET),
        Described { name: CIM_JWT_HS256_SECRET, origin: Origin::Unset, shown: None }
    );
    assert_eq!(line(CIM_REDIS_URL).shown.as_deref(), Some("redis://:***@cache:6379"));
    assert_eq!(line(CIM_REDIS_URL).origin, Origin::Set);
    assert_eq!(line(CIM_DATA_DIR).shown.as_deref(), Some("/home/ann/.local/share/cim"));
    assert_eq!(line(CIM_DATA_DIR).origin, Origin::Default);
    let env: HashMap<&str, &str> = HashMap::from([(CIM_JWT_HS256_SECRET, "0123456789abcdef0123456789abcdef")]);
    let lines = Config::describe(&|k| env.get(k).map(|v| v.to_string()));
    let secret = lines.iter().find(|d| d.name == CIM_JWT_HS256_SECRET).unwrap();
    assert_eq!((secret.origin, secret.shown.as_deref()), (Origin::Set, Some("<redacted>")));
}

#[test]
fn unknown_cim_variables_are_flagged() {
    let env = ["CIM_DATABSE_URL", "CIM_NATS_URL", "PATH", "CIM_TEST_DATABASE_URL"].map(String::from);
    assert_eq!(Config::unknown_vars(env), ["CIM_DATABSE_URL"]);
}

#[test]
fn the_table_has_every_service_and_no_duplicates() {
    let mut names: Vec<_> = VARS.iter().map(|v| v.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), VARS.len());
    for kind in ServiceKind::ALL {
        assert!(names.contains(&kind.addr_var().as_str()));
        assert!(names.contains(&kind.admin_addr_var().as_str()));
    }
}

#[test]
fn agent_timings_leave_room_for_a_heartbeat() {
    let c = from(&[(CIM_AGENT_LEASE_MS, "2000"), (CIM_AGENT_HEARTBEAT_INTERVAL_MS, "500")]).unwrap();
    assert_eq!((c.agent.lease, c.agent.heartbeat_interval), (Duration::from_secs(2), Duration::from_millis(500)));
    assert_eq!(c.agent.heartbeat_timeout, Duration::from_secs(15));
    let err = from(&[(CIM_AGENT_LEASE_MS, "1000"), (CIM_AGENT_HEARTBEAT_INTERVAL_MS, "1000")]).unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    assert!(err.to_string().contains("CIM_AGENT_LEASE_MS: expected milliseconds"), "{err}");
    let err = from(&[(CIM_AGENT_HEARTBEAT_TIMEOUT_MS, "soon")]).unwrap_err();
    assert!(err.to_string().contains("CIM_AGENT_HEARTBEAT_TIMEOUT_MS"), "{err}");
}

#[test]
fn workflow_engine_settings_are_bounded() {
    let c = from(&[]).unwrap();
    assert_eq!(
        (c.workflow.lease, c.workflow.poll, c.workflow.concurrency),
        (Duration::from_secs(30), Duration::from_millis(100), 16)
    );
    let c = from(&[(CIM_WORKFLOW_LEASE_MS, "2000"), (CIM_WORKFLOW_POLL_MS, "20"), (CIM_WORKFLOW_CONCURRENCY, "4")])
        .unwrap();
    assert_eq!(
        (c.workflow.lease, c.workflow.poll, c.workflow.concurrency),
        (Duration::from_secs(2), Duration::from_millis(20), 4)
    );
    for (var, bad) in [(CIM_WORKFLOW_LEASE_MS, "50"), (CIM_WORKFLOW_POLL_MS, "0"), (CIM_WORKFLOW_CONCURRENCY, "0")] {
        let err = from(&[(var, bad)]).unwrap_err();
        assert!(err.to_string().contains(var), "{err}");
    }
}

fn secret_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cim-config-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Every secret variable, and only those, has a `_FILE` form: the one `secret` mark in the table
/// decides both that and the redaction.
#[test]
fn every_secret_can_be_read_from_a_file_and_is_never_shown() {
    let secrets: Vec<&str> = VARS.iter().filter(|v| v.secret.is_secret()).map(|v| v.name).collect();
    assert!(secrets.contains(&CIM_JWT_HS256_SECRET) && secrets.contains(&CIM_DATABASE_URL), "{secrets:?}");
    let files: Vec<String> = secrets.iter().map(|s| file_var(s)).collect();
    assert_eq!(Config::unknown_vars(files), Vec::<String>::new());
    assert_eq!(Config::unknown_vars(["CIM_JWT_ISSUER_FILE".to_owned()]), ["CIM_JWT_ISSUER_FILE"]);

    let jwt = secret_file("jwt", "hunter2-hunter2-hunter2-hunter2-hunter2\n");
    let db = secret_file("db", "postgres://app:hunter2@db:5432/cim\r\n");
    let env: HashMap<String, String> = HashMap::from([
        (file_var(CIM_JWT_HS256_SECRET), jwt.display().to_string()),
        (file_var(CIM_DATABASE_URL), db.display().to_string()),
    ]);
    let lookup = |k: &str| env.get(k).cloned();
    let c = Config::from_lookup(&lookup).unwrap();
    // The file's line break is not part of the value.
    assert_eq!(c.edge.auth.hs256_secret.as_ref().unwrap().expose(), "hunter2-hunter2-hunter2-hunter2-hunter2");
    assert_eq!(c.database_url.expose(), "postgres://app:hunter2@db:5432/cim");
    for line in Config::describe(&lookup) {
        let shown = line.shown.clone().unwrap_or_default();
        assert!(!shown.contains("hunter2") && !shown.contains("app:"), "{line:?}");
        if [CIM_JWT_HS256_SECRET, CIM_DATABASE_URL].contains(&line.name) {
            assert_eq!(line.origin, Origin::File, "{line:?}");
            assert!(shown.starts_with("<read from /"), "{line:?}");
        }
    }
}

#[test]
fn a_secret_file_that_is_missing_empty_doubled_or_bad_is_named_without_its_contents() {
    let missing = "/nonexistent/cim/jwt";
    let err = from(&[("CIM_JWT_HS256_SECRET_FILE", missing)]).unwrap_err();
    assert_eq!(err.0[0].var, "CIM_JWT_HS256_SECRET_FILE");
    assert!(err.to_string().contains(missing), "{err}");
    let empty = secret_file("empty", "\n");
    let err = from(&[("CIM_REDIS_URL_FILE", empty.to_str().unwrap())]).unwrap_err();
    assert!(err.to_string().contains("an empty file"), "{err}");
    let both = secret_file("both", "0123456789abcdef0123456789abcdef");
    let err = from(&[
        (CIM_JWT_HS256_SECRET, "0123456789abcdef0123456789abcdef"),
        ("CIM_JWT_HS256_SECRET_FILE", both.to_str().unwrap()),
    ])
    .unwrap_err();
    assert!(err.to_string().contains("not both"), "{err}");
    // A URL read from a file that does not parse: not even its masked form is shown.
    let bad = secret_file("bad-url", "mysql://root:hunter2@db/cim");
    let err = from(&[("CIM_DATABASE_URL_FILE", bad.to_str().unwrap())]).unwrap_err();
    let line = err.to_string();
    assert!(
        line.contains("CIM_DATABASE_URL: expected") && line.contains("the contents of CIM_DATABASE_URL_FILE"),
        "{line}"
    );
    assert!(!line.contains("hunter2") && !line.contains("mysql"), "{line}");
}

#[test]
fn jwt_key_sources_and_time_rules_are_parsed() {
    let c = from(&[]).unwrap().edge;
    assert_eq!((c.auth.leeway, c.auth.max_lifetime), (Duration::from_secs(30), Duration::from_secs(86_400)));
    assert!(c.auth.public_key_files.is_empty() && c.auth.jwks_url.is_none() && !c.auth.has_keys());
    assert!(c.gateway.cookie_secure, "Secure cookies unless turned off");
    let c = from(&[
        (CIM_JWT_PUBLIC_KEY_FILE, "/keys/2026-01.pem, /keys/issuer.json"),
        (CIM_JWT_JWKS_URL, "https://idp.example.com/.well-known/jwks.json"),
        (CIM_JWT_KEYS_REFRESH_SECS, "5"),
        (CIM_GATEWAY_COOKIE_SECURE, "false"),
        (CIM_GATEWAY_PROXY_HOPS, "1"),
    ])
    .unwrap()
    .edge;
    assert_eq!(c.auth.public_key_files, [std::path::PathBuf::from("/keys/2026-01.pem"), "/keys/issuer.json".into()]);
    assert!(c.auth.has_keys());
    assert_eq!(c.auth.keys_refresh, Duration::from_secs(5));
    assert!(!c.gateway.cookie_secure);
    assert_eq!(c.gateway.proxy_hops, 1);
    for (var, bad) in [
        (CIM_JWT_JWKS_URL, "idp.example.com/jwks"),
        (CIM_JWT_LEEWAY_SECS, "3600"),
        (CIM_JWT_MAX_LIFETIME_SECS, "0"),
        (CIM_JWT_PUBLIC_KEY_FILE, "/a.pem,,/b.pem"),
        (CIM_GATEWAY_AUTH_FAILURES_PER_MINUTE, "-1"),
    ] {
        let err = from(&[(var, bad)]).unwrap_err();
        assert_eq!(err.0[0].var, var, "{err}");
    }
}

#[test]
fn the_consoles_websocket_and_grafana_urls_are_optional_and_checked() {
    let c = from(&[]).unwrap().edge.gateway;
    assert_eq!((c.console_websocket_url, c.grafana_url, c.websocket_admin_url), (None, None, None));
    let c = from(&[
        (CIM_GATEWAY_CONSOLE_WEBSOCKET_URL, "wss://cim.example/ws"),
        (CIM_GATEWAY_GRAFANA_URL, "http://127.0.0.1:3000"),
        (CIM_GATEWAY_WEBSOCKET_ADMIN_URL, "http://websocket:9101"),
    ])
    .unwrap()
    .edge
    .gateway;
    assert_eq!(c.console_websocket_url.as_deref(), Some("wss://cim.example/ws"));
    assert_eq!(c.grafana_url.as_deref(), Some("http://127.0.0.1:3000"));
    assert_eq!(c.websocket_admin_url.as_deref(), Some("http://websocket:9101"));
    // The websocket URL goes into the console's Content-Security-Policy: nothing that could end
    // or extend a directive.
    for (var, bad) in [
        (CIM_GATEWAY_CONSOLE_WEBSOCKET_URL, "https://cim.example/ws"),
        (CIM_GATEWAY_CONSOLE_WEBSOCKET_URL, "wss://cim.example/ws; script-src *"),
        (CIM_GATEWAY_CONSOLE_WEBSOCKET_URL, "wss://cim.example/ws;script-src"),
        (CIM_GATEWAY_CONSOLE_WEBSOCKET_URL, "wss://a,b"),
        (CIM_GATEWAY_CONSOLE_WEBSOCKET_URL, "wss://a/'unsafe-inline'"),
        (CIM_GATEWAY_GRAFANA_URL, "grafana:3000"),
        (CIM_GATEWAY_WEBSOCKET_ADMIN_URL, "websocket:9101"),
    ] {
        let err = from(&[(var, bad)]).unwrap_err();
        assert_eq!(err.0[0].var, var, "{bad}: {err}");
    }
}

#[test]
fn operator_tenants_are_a_list_of_tenant_ids_and_none_by_default() {
    assert!(from(&[]).unwrap().edge.gateway.operator_tenants.is_empty(), "unset: no tenant operates");
    let (a, b) = (cim_core::TenantId::new(), cim_core::TenantId::new());
    let listed = format!("{a}, {b}");
    let c = from(&[(CIM_GATEWAY_OPERATOR_TENANTS, &listed)]).unwrap().edge.gateway;
    assert_eq!(c.operator_tenants, vec![a, b]);
    let nil = "00000000-0000-0000-0000-000000000000".to_owned();
    for bad in ["ops".to_owned(), format!("{a},"), format!("{a},,{b}"), nil] {
        let err = from(&[(CIM_GATEWAY_OPERATOR_TENANTS, &bad)]).unwrap_err();
        assert_eq!(err.0[0].var, CIM_GATEWAY_OPERATOR_TENANTS, "{bad}: {err}");
        assert!(err.to_string().contains("tenant ids (UUIDv7) separated by commas"), "{err}");
    }
}

#[test]
fn per_tenant_rate_limits_are_tenant_limit_pairs_each_tenant_once() {
    assert!(from(&[]).unwrap().edge.gateway.rate_limit_tenants.is_empty(), "unset: every tenant gets the default");
    let (a, b) = (cim_core::TenantId::new(), cim_core::TenantId::new());
    let listed = format!("{a}=60, {b} = 0");
    let c = from(&[(CIM_GATEWAY_RATE_LIMIT_TENANTS, &listed)]).unwrap().edge.gateway;
    assert_eq!(c.rate_limit_tenants, vec![(a, 60), (b, 0)]);
    for bad in [format!("{a}"), format!("{a}=-1"), format!("{a}=60,{a}=70"), format!("{a}=60,"), "ops=5".to_owned()] {
        let err = from(&[(CIM_GATEWAY_RATE_LIMIT_TENANTS, &bad)]).unwrap_err();
        assert_eq!(err.0[0].var, CIM_GATEWAY_RATE_LIMIT_TENANTS, "{bad}: {err}");
        assert!(err.to_string().contains("tenant=limit pairs separated by commas"), "{err}");
    }
}
