//! `cim token` and `cim local-secret`: bearer tokens for local development.

use std::str::FromStr;

use super::*;

pub(crate) fn token(tenant: Option<String>, roles: &str, subject: String, ttl: u64) -> ExitCode {
    let config = match load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let secret = match signing_secret(&config) {
        Ok(s) => s,
        Err(e) => return fail(&e, EXIT_CONFIG),
    };
    // The services refuse a token that claims to live longer (CIM_JWT_MAX_LIFETIME_SECS).
    let max = config.edge.auth.max_lifetime.as_secs();
    if ttl > max {
        return fail(&format!("--ttl {ttl}: at most {max} s (CIM_JWT_MAX_LIFETIME_SECS)"), EXIT_CONFIG);
    }
    let tenant = tenant.unwrap_or_else(|| cim_core::TenantId::new().to_string());
    let claims = cim_auth::Claims {
        sub: subject,
        tenant,
        roles: roles.split(',').map(|r| r.trim().to_owned()).filter(|r| !r.is_empty()).collect(),
        exp: cim_auth::now_secs() + ttl,
        iss: config.edge.auth.issuer.clone(),
        aud: config.edge.auth.audience,
    };
    match cim_auth::issue_hs256(&secret, &claims) {
        Ok(t) => {
            out(&t);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string(), 1),
    }
}

/// CIM_JWT_HS256_SECRET, else (no public key configured either) the local development secret.
fn signing_secret(config: &Config) -> Result<String, String> {
    let auth = &config.edge.auth;
    if let Some(secret) = &auth.hs256_secret {
        return Ok(secret.expose().to_owned());
    }
    if auth.has_keys() {
        return Err("CIM_JWT_HS256_SECRET is not set and tokens are verified with public keys \
                    (CIM_JWT_PUBLIC_KEY_FILE or CIM_JWT_JWKS_URL): cim token signs only HS256; sign with \
                    a private key whose public half is configured"
            .into());
    }
    let Some(path) = config.local_secret_file() else {
        return Err("CIM_JWT_HS256_SECRET is not set, and there is no local secret: neither CIM_DATA_DIR \
                    nor HOME is set"
            .into());
    };
    if !path.exists() {
        return Err(format!(
            "CIM_JWT_HS256_SECRET is not set and there is no local development secret at {}: start CIM \
             with scripts/up.sh (it makes one), or run `cim local-secret`, or set CIM_JWT_HS256_SECRET \
             to the secret the gateway uses",
            path.display()
        ));
    }
    local::read(&path)
}

pub(crate) fn service_token(tenant: &str, actor: &str, roles: &str, ttl: u64) -> ExitCode {
    use cim_runtime::edge::{ACTOR_HEADER, ROLES_HEADER, TENANT_HEADER};
    use cim_runtime::identity::{MAX_LIFETIME, SIGNATURE_HEADER};
    let config = match load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(key) = &config.service_identity else {
        return fail(
            "CIM_SERVICE_TOKEN_SECRET is not set: the services take caller metadata unsigned, so send \
             x-cim-tenant and x-cim-actor alone; or set it to the key the services hold",
            EXIT_CONFIG,
        );
    };
    if ttl > MAX_LIFETIME.as_secs() {
        return fail(&format!("--ttl {ttl}: at most {} s (31 days)", MAX_LIFETIME.as_secs()), EXIT_CONFIG);
    }
    if cim_core::TenantId::from_str(tenant).is_err() {
        return fail(&format!("--tenant {tenant:?}: expected a UUIDv7"), EXIT_CONFIG);
    }
    if cim_core::Actor::from_str(actor).is_err() {
        return fail(&format!("--actor {actor:?}: expected service:<name> or user:<name>"), EXIT_CONFIG);
    }
    let signature = key.sign(cim_runtime::identity::now_secs() + ttl, tenant, actor, roles);
    out(&format!(
        "{TENANT_HEADER}: {tenant}\n{ACTOR_HEADER}: {actor}\n{ROLES_HEADER}: {roles}\n{SIGNATURE_HEADER}: {signature}"
    ));
    ExitCode::SUCCESS
}

pub(crate) fn local_secret() -> ExitCode {
    let config = match load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(path) = config.local_secret_file() else {
        return fail("no data directory: set CIM_DATA_DIR (or HOME)", EXIT_CONFIG);
    };
    match local::ensure(&path) {
        Ok(_) => {
            out(&path.display().to_string());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e, 1),
    }
}
