"""consistency.py's checks of the infrastructure exporters (tests/deploy/exporters.py) and of the
production overlay's log shipping, in compose, every k8s overlay and both Prometheus configs:
names, ports, networks (through consistency.design_flows), NetworkPolicies, credentials and the
configuration files each one mounts. Called by consistency.main()."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

import consistency as C
from exporters import BLACKBOX_CONFIG, EXPORTERS, POSTGRES_QUERIES, PROBES

PROM_CONFIGS = {"compose": "monitoring/prometheus/prometheus.yml", "k8s": "monitoring/prometheus/prometheus-k8s.yml"}
# The exporters that run as a Deployment of k8s/base/exporters; node-exporter is the production
# overlay's DaemonSet; MinIO serves its own metrics.
K8S_DEPLOYED = ("postgres", "redis", "nats", "blackbox")
NODE = "node"
# What each exporter logs in as, and where the store learns the same password.
MONITORING_ROLE = "monitoring"
PG_INIT = "docker/postgres/init/10-cim-roles.sh"
# Redis commands the monitoring user may run: server state only (no key, no write).
REDIS_MONITORING_ALLOWED = {"+ping", "+info", "+config|get", "+client|list", "+slowlog|get", "+slowlog|len",
                            "+latency|latest", "+select"}  # fmt: skip
LOGS = {"alloy": "DaemonSet", "loki": "StatefulSet"}
LOKI_PORT = 3100
LOG_OVERLAYS = ("production", "serverless")


def check(c: C.Checker, compose: dict, overlays: dict[str, list[dict]]) -> None:
    check_prometheus_jobs(c)
    check_compose(c, compose)
    for overlay, docs in overlays.items():
        check_k8s(c, overlay, docs, compose)
        if overlay in LOG_OVERLAYS:
            check_k8s_logs(c, overlay, docs)


# --- Prometheus --------------------------------------------------------------------------------


def jobs(conf: str) -> dict[str, dict]:
    return {j["job_name"]: j for j in yaml.safe_load((C.ROOT / conf).read_text())["scrape_configs"]}


def job_targets(job: dict) -> list[str]:
    """host:port of each target: static ones as written, DNS ones as name:port."""
    out = [t for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
    out += [f"{n}:{sd.get('port')}" for sd in job.get("dns_sd_configs", []) for n in sd.get("names", [])]
    return out


def check_prometheus_jobs(c: C.Checker) -> None:
    modules = yaml.safe_load((C.ROOT / BLACKBOX_CONFIG).read_text())["modules"]
    blackbox = EXPORTERS["blackbox"]
    for where, conf in PROM_CONFIGS.items():
        have = jobs(conf)
        for job, e in EXPORTERS.items():
            j = have.get(job)
            if not c.check(j is not None, f"{conf}: no job {job} (the {e.host} exporter)"):
                continue
            c.check(job_targets(j) == [f"{e.host}:{e.port}"],
                    f"{conf} job {job}: targets {job_targets(j)}, expected {e.host}:{e.port}")  # fmt: skip
            c.check(j.get("metrics_path", "/metrics") == e.path, f"{conf} job {job}: metrics_path must be {e.path}")
        for job, (module, _) in PROBES.items():
            j = have.get(job)
            if not c.check(j is not None, f"{conf}: no probe job {job}"):
                continue
            c.check((j.get("params") or {}).get("module") == [module] and module in modules,
                    f"{conf} job {job}: module must be [{module}], a module of {BLACKBOX_CONFIG}")  # fmt: skip
            to = [r.get("replacement") for r in j.get("relabel_configs", []) if r.get("target_label") == "__address__"]
            c.check(to == [f"{blackbox.host}:{blackbox.port}"],
                    f"{conf} job {job}: must scrape the blackbox exporter {blackbox.host}:{blackbox.port} (is {to})")  # fmt: skip
        nats = job_targets(have.get("nats-health") or {})
        c.check(all(t.startswith("http://nats:8222/healthz") for t in nats) and bool(nats),
                f"{conf} job nats-health: must probe http://nats:8222/healthz (probes {nats})")  # fmt: skip


# --- compose -----------------------------------------------------------------------------------


def env_of(spec: dict) -> dict[str, str]:
    env = spec.get("environment") or {}
    return {k: str(v) for k, v in env.items()} if isinstance(env, dict) else dict(e.split("=", 1) for e in env)


def command_text(spec: dict) -> str:
    cmd = spec.get("command") or []
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def redis_monitoring_acl(command: str) -> list[str] | None:
    """The rules of `--user monitoring ...` in a redis-server command line, split as the shell
    that runs it does: an unquoted `|` (as in +config|get) is a pipe, a word of its own here."""
    lexer = shlex.shlex(command.replace("\n", " "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = list(lexer)
    for i, w in enumerate(words):
        if w == "--user" and i + 1 < len(words) and words[i + 1] == MONITORING_ROLE:
            rest = words[i + 2:]
            end = rest.index("--user") if "--user" in rest else len(rest)
            return rest[:end]
    return None


def check_redis_acl(c: C.Checker, acl: list[str] | None, var: str, where: str) -> None:
    if not c.check(acl is not None, f"{where}: redis-server defines no ACL user {MONITORING_ROLE}"):
        return
    # compose's rendered command keeps its $$ (the shell, not compose, expands the variable).
    c.check(acl[:2] in (["on", f">${var}"], ["on", f">$${var}"]), f"{where}: ACL user {MONITORING_ROLE} must be `on \">${var}\"` (is {acl[:2]})")
    c.check(not any(set(r) <= set("|&;<>()") for r in acl),
            f"{where}: ACL user {MONITORING_ROLE}'s rules hold an unquoted shell operator (quote \"+config|get\"): {acl}")  # fmt: skip
    grants = [r for r in acl[2:] if r.startswith("+") or r.startswith("~") or r.startswith("&") or r == "allkeys"]
    c.check("-@all" in acl and set(grants) <= REDIS_MONITORING_ALLOWED,
            f"{where}: ACL user {MONITORING_ROLE} may run only {sorted(REDIS_MONITORING_ALLOWED)} (no keys), "
            f"has {grants}")  # fmt: skip


def check_compose(c: C.Checker, compose: dict) -> None:
    services = compose["services"]
    for job, e in EXPORTERS.items():
        if e.host == "minio":
            continue
        spec = services.get(e.host)
        if not c.check(spec is not None, f"compose.yaml: no service {e.host} (exporter of job {job})"):
            continue
        c.check(spec.get("image", "").rsplit(":", 1)[0] == e.image,
                f"compose.yaml {e.host}: image {spec.get('image')}, expected {e.image}:<tag>")  # fmt: skip
        c.check(str(e.port) in [str(p) for p in spec.get("expose") or []], f"compose.yaml {e.host}: must expose {e.port}")
        c.check(spec.get("read_only") is True and "ALL" in (spec.get("cap_drop") or []),
                f"compose.yaml {e.host}: read_only and cap_drop [ALL] like every other container")  # fmt: skip
    mounts = lambda spec: {v.get("target"): v.get("source") for v in spec.get("volumes") or []}  # noqa: E731

    pg, pge = services.get("postgres", {}), services.get("postgres-exporter", {})
    pg_env, pge_env = env_of(pg), env_of(pge)
    c.check(pge_env.get("DATA_SOURCE_USER") == MONITORING_ROLE and pge_env.get("DATA_SOURCE_PASS") is not None
            and pge_env.get("DATA_SOURCE_PASS") == pg_env.get("PG_PASSWORD_MONITORING"),
            "compose.yaml postgres-exporter: must log in as monitoring with postgres' PG_PASSWORD_MONITORING")  # fmt: skip
    c.check(pge_env.get("DATA_SOURCE_URI", "").startswith(f"postgres:{C.STORES['postgres']}/"),
            "compose.yaml postgres-exporter: DATA_SOURCE_URI must name postgres:5432")  # fmt: skip
    m = re.search(r"--extend\.query-path=(\S+)", command_text(pge))
    c.check(m is not None and mounts(pge).get(m.group(1)) == str(C.ROOT / POSTGRES_QUERIES),
            f"compose.yaml postgres-exporter: --extend.query-path must be where {POSTGRES_QUERIES} is mounted")  # fmt: skip
    init = (C.ROOT / PG_INIT).read_text()
    c.check(re.search(rf"CREATE ROLE {MONITORING_ROLE} LOGIN PASSWORD :'password'", init) is not None
            and f"GRANT pg_monitor TO {MONITORING_ROLE};" in init and "PG_PASSWORD_MONITORING" in init,
            f"{PG_INIT}: must create the login role {MONITORING_ROLE} (PG_PASSWORD_MONITORING) with pg_monitor")  # fmt: skip

    redis, rexp = services.get("redis", {}), services.get("redis-exporter", {})
    rexp_env = env_of(rexp)
    c.check(rexp_env.get("REDIS_USER") == MONITORING_ROLE and rexp_env.get("REDIS_PASSWORD") is not None
            and rexp_env.get("REDIS_PASSWORD") == env_of(redis).get("REDIS_PASSWORD_MONITORING"),
            "compose.yaml redis-exporter: must log in as monitoring with redis' REDIS_PASSWORD_MONITORING")  # fmt: skip
    c.check(rexp_env.get("REDIS_ADDR") == f"redis://redis:{C.STORES['redis']}", "compose.yaml redis-exporter: REDIS_ADDR must be redis://redis:6379")
    check_redis_acl(c, redis_monitoring_acl(command_text(redis)), "REDIS_PASSWORD_MONITORING", "compose.yaml redis")

    c.check(env_of(services.get("minio", {})).get("MINIO_PROMETHEUS_AUTH_TYPE") == "public",
            "compose.yaml minio: MINIO_PROMETHEUS_AUTH_TYPE=public (Prometheus scrapes it without a token)")  # fmt: skip
    bb = services.get("blackbox-exporter", {})
    m = re.search(r"--config\.file=(\S+)", command_text(bb))
    c.check(m is not None and mounts(bb).get(m.group(1)) == str(C.ROOT / BLACKBOX_CONFIG),
            f"compose.yaml blackbox-exporter: --config.file must be where {BLACKBOX_CONFIG} is mounted")  # fmt: skip
    c.check("http://nats:8222" in command_text(services.get("nats-exporter", {})),
            "compose.yaml nats-exporter: must read http://nats:8222")  # fmt: skip
    c.check(re.search(r"^http_port:\s*8222\b", (C.ROOT / "docker/nats/nats.conf").read_text(), re.M) is not None,
            "docker/nats/nats.conf: http_port 8222 (the exporters read it)")  # fmt: skip


# --- Kubernetes --------------------------------------------------------------------------------


def container_ports(doc: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for ctr in C.pod_template(doc)["spec"]["containers"]
            for p in ctr.get("ports", []) if "name" in p}  # fmt: skip


def pod_labels(doc: dict) -> dict[str, str]:
    return C.pod_template(doc)["metadata"].get("labels") or {}


def container_env(doc: dict) -> dict[str, str]:
    return {e["name"]: str(e.get("value")) for ctr in C.pod_template(doc)["spec"]["containers"]
            for e in ctr.get("env", []) if "value" in e}  # fmt: skip


def secret_refs(doc: dict) -> list[str]:
    return [s["secretRef"]["name"] for ctr in C.pod_template(doc)["spec"]["containers"]
            for s in ctr.get("envFrom", []) if "secretRef" in s]  # fmt: skip


def configmap_mounts(doc: dict) -> dict[str, str]:
    """mountPath -> the ConfigMap's name (as generated: with kustomize's hash suffix)."""
    spec = C.pod_template(doc)["spec"]
    vols = {v["name"]: (v.get("configMap") or {}).get("name") for v in spec.get("volumes", [])}
    return {m["mountPath"]: vols.get(m["name"]) for ctr in spec["containers"] for m in ctr.get("volumeMounts", [])
            if vols.get(m["name"])}  # fmt: skip


def generated(docs: list[dict], name: str) -> dict | None:
    """The ConfigMap or Secret generated as `name` (kustomize adds -<hash>)."""
    return next((d for d in docs if d["kind"] in ("ConfigMap", "Secret")
                 and re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?", d["metadata"]["name"])), None)  # fmt: skip


def check_k8s(c: C.Checker, overlay: str, docs: list[dict], compose: dict) -> None:
    prom = C.k8s_find(docs, "Deployment", "prometheus")
    prom_labels = pod_labels(prom) if prom else {}
    compose_tags = {s["image"].rsplit(":", 1)[0]: C.image_tag(s["image"]) for s in compose["services"].values() if "image" in s}
    where = f"k8s {overlay}"
    for job in K8S_DEPLOYED:
        e = EXPORTERS[job]
        dep, svc = C.k8s_find(docs, "Deployment", e.host), C.k8s_find(docs, "Service", e.host)
        if not c.check(dep is not None and svc is not None, f"{where}: no Deployment and Service {e.host}"):
            continue
        c.check([p["port"] for p in svc["spec"]["ports"]] == [e.port], f"{where}: Service {e.host} must expose {e.port}")
        labels, names = pod_labels(dep), container_ports(dep)
        c.check(e.port in names.values(), f"{where}: Deployment {e.host} has no container port {e.port}")
        c.check(C.k8s_allows(docs, "Ingress", labels, prom_labels, e.port, names),
                f"{where}: NetworkPolicy {e.host} does not admit Prometheus on {e.port}")  # fmt: skip
        for s in C.SERVICES:
            d = C.k8s_find(docs, "Deployment", s)
            if d is not None:
                c.check(not C.k8s_allows(docs, "Ingress", labels, pod_labels(d), e.port, names),
                        f"{where}: NetworkPolicy {e.host} admits {s} (only Prometheus scrapes it)")  # fmt: skip
        if e.store:
            store = C.k8s_find(docs, "StatefulSet", e.store)
            if store is not None:
                c.check(C.k8s_allows(docs, "Ingress", pod_labels(store), labels, e.store_port, container_ports(store)),
                        f"{where}: {e.store}'s NetworkPolicy does not admit {e.host} on {e.store_port}")  # fmt: skip
        image = C.pod_template(dep)["spec"]["containers"][0]["image"]
        c.check(image.rsplit(":", 1)[0] == e.image and C.image_tag(image) == compose_tags.get(e.image),
                f"{where}: {e.host} runs {image}, compose runs {e.image}:{compose_tags.get(e.image)}")  # fmt: skip

    pge = C.k8s_find(docs, "Deployment", "postgres-exporter")
    if pge is not None:
        env = container_env(pge)
        c.check(env.get("DATA_SOURCE_USER") == MONITORING_ROLE and env.get("DATA_SOURCE_URI", "").startswith("postgres:5432/"),
                f"{where}: postgres-exporter must log in to postgres:5432 as {MONITORING_ROLE}")  # fmt: skip
        args = " ".join(C.pod_template(pge)["spec"]["containers"][0].get("args", []))
        m = re.search(r"--extend\.query-path=(\S+)/([^/\s]+)", args)
        cm = configmap_mounts(pge).get(m.group(1)) if m else None
        c.check(m is not None and m.group(2) == Path(POSTGRES_QUERIES).name and bool(cm)
                and generated(docs, "postgres-exporter-queries") is not None and cm.startswith("postgres-exporter-queries"),
                f"{where}: postgres-exporter must read {POSTGRES_QUERIES} from the ConfigMap postgres-exporter-queries")  # fmt: skip
        check_k8s_password(c, docs, where, secret_refs(pge), "DATA_SOURCE_PASS", "postgres-secrets", "PG_PASSWORD_MONITORING")
    rexp = C.k8s_find(docs, "Deployment", "redis-exporter")
    if rexp is not None:
        c.check(container_env(rexp).get("REDIS_USER") == MONITORING_ROLE, f"{where}: redis-exporter must log in as {MONITORING_ROLE}")
        check_k8s_password(c, docs, where, secret_refs(rexp), "REDIS_PASSWORD", "redis-secrets", "REDIS_PASSWORD_MONITORING")
    redis = C.k8s_find(docs, "StatefulSet", "redis")
    if redis is not None:
        cmd = " ".join(C.pod_template(redis)["spec"]["containers"][0].get("command", []))
        check_redis_acl(c, redis_monitoring_acl(cmd), "REDIS_PASSWORD_MONITORING", f"{where}: StatefulSet redis")
    bb = C.k8s_find(docs, "Deployment", "blackbox-exporter")
    if bb is not None:
        args = " ".join(C.pod_template(bb)["spec"]["containers"][0].get("args", []))
        m = re.search(r"--config\.file=(\S+)/([^/\s]+)", args)
        cm = configmap_mounts(bb).get(m.group(1)) if m else None
        c.check(m is not None and m.group(2) == Path(BLACKBOX_CONFIG).name and bool(cm) and cm.startswith("blackbox-config"),
                f"{where}: blackbox-exporter must read {BLACKBOX_CONFIG} from the ConfigMap blackbox-config")  # fmt: skip
    minio = C.k8s_find(docs, "StatefulSet", "minio")
    if minio is not None:
        c.check(container_env(minio).get("MINIO_PROMETHEUS_AUTH_TYPE") == "public",
                f"{where}: MinIO needs MINIO_PROMETHEUS_AUTH_TYPE=public (Prometheus scrapes it without a token)")  # fmt: skip
        c.check(C.k8s_allows(docs, "Ingress", pod_labels(minio), prom_labels, 9000, container_ports(minio)),
                f"{where}: MinIO's NetworkPolicy does not admit Prometheus on 9000")  # fmt: skip
    if overlay in LOG_OVERLAYS:
        check_k8s_node_exporter(c, where, docs, prom_labels, compose_tags)


def check_k8s_password(c: C.Checker, docs: list[dict], where: str, refs: list[str], key: str, store_secret: str,
                       store_key: str) -> None:  # fmt: skip
    """The exporter's Secret carries the password the store's Secret gives the role (where the
    overlay generates both; production's are listed in its kustomization, checked by consistency)."""
    c.check(len(refs) == 1, f"{where}: an exporter reads its password from one Secret (reads {refs})")
    mine, store = (generated(docs, refs[0]) if refs else None), generated(docs, store_secret)
    if mine is not None and store is not None:
        c.check(C.secret_values(mine).get(key) is not None
                and C.secret_values(mine).get(key) == C.secret_values(store).get(store_key),
                f"{where}: Secret {refs[0]}'s {key} must equal {store_secret}' {store_key}")  # fmt: skip


def check_k8s_node_exporter(c: C.Checker, where: str, docs: list[dict], prom_labels: dict, tags: dict) -> None:
    e = EXPORTERS[NODE]
    ds, svc = C.k8s_find(docs, "DaemonSet", e.host), C.k8s_find(docs, "Service", e.host)
    if not c.check(ds is not None and svc is not None, f"{where}: no DaemonSet and Service {e.host}"):
        return
    c.check(svc["spec"].get("clusterIP") == "None" and [p["port"] for p in svc["spec"]["ports"]] == [e.port],
            f"{where}: Service {e.host} must be headless (one DNS record per node) on port {e.port}")  # fmt: skip
    c.check(C.k8s_allows(docs, "Ingress", pod_labels(ds), prom_labels, e.port, container_ports(ds)),
            f"{where}: NetworkPolicy {e.host} does not admit Prometheus on {e.port}")  # fmt: skip
    image = C.pod_template(ds)["spec"]["containers"][0]["image"]
    c.check(image.rsplit(":", 1)[0] == e.image and C.image_tag(image) == tags.get(e.image),
            f"{where}: {e.host} runs {image}, compose runs {e.image}:{tags.get(e.image)}")  # fmt: skip
    vols = [v for v in C.pod_template(ds)["spec"].get("volumes", []) if "hostPath" in v]
    mounts = [m for ctr in C.pod_template(ds)["spec"]["containers"] for m in ctr.get("volumeMounts", [])
              if m["name"] in {v["name"] for v in vols}]  # fmt: skip
    c.check(bool(mounts) and all(m.get("readOnly") for m in mounts), f"{where}: {e.host} mounts the host read-only")


def check_k8s_logs(c: C.Checker, overlay: str, docs: list[dict]) -> None:
    """Alloy on every node reads the pods' logs (RBAC to discover them) and pushes to Loki, which
    admits only Alloy and Grafana; Grafana has Loki as a datasource; the parsing of CIM's JSON
    lines is compose's (docker/alloy/config.alloy)."""
    where = f"k8s {overlay}"
    alloy, loki = C.k8s_find(docs, "DaemonSet", "alloy"), C.k8s_find(docs, "StatefulSet", "loki")
    loki_svc = C.k8s_find(docs, "Service", "loki")
    if not c.check(alloy is not None and loki is not None and loki_svc is not None,
                   f"{where}: ships no logs (DaemonSet alloy, StatefulSet and Service loki)"):  # fmt: skip
        return
    c.check(LOKI_PORT in [p["port"] for p in loki_svc["spec"]["ports"]], f"{where}: Service loki must expose {LOKI_PORT}")
    # RBAC: Alloy's ServiceAccount may list and watch pods (discovery.kubernetes) and read their logs.
    sa = C.pod_template(alloy)["spec"].get("serviceAccountName")
    roles = {b["roleRef"]["name"] for b in docs if b["kind"] in ("RoleBinding", "ClusterRoleBinding")
             and any(s.get("kind") == "ServiceAccount" and s.get("name") == sa for s in b.get("subjects", []))}  # fmt: skip
    verbs: dict[str, set[str]] = {}
    for r in docs:
        if r["kind"] in ("Role", "ClusterRole") and r["metadata"]["name"] in roles:
            for rule in r.get("rules", []):
                for res in rule.get("resources", []):
                    verbs.setdefault(res, set()).update(rule.get("verbs", []))
    c.check(C.k8s_find(docs, "ServiceAccount", sa or "") is not None and {"get", "list", "watch"} <= verbs.get("pods", set())
            and "get" in verbs.get("pods/log", set()),
            f"{where}: Alloy's ServiceAccount {sa} needs a Role with get/list/watch on pods and get on pods/log "
            f"(has {dict((k, sorted(v)) for k, v in verbs.items())})")  # fmt: skip
    cm_path = next(iter(configmap_mounts(alloy).items()), (None, None))
    cm = generated(docs, "alloy-config")
    c.check(cm is not None and cm_path[1] == cm["metadata"]["name"], f"{where}: DaemonSet alloy must mount the ConfigMap alloy-config")
    if cm is not None:
        text = next(iter(cm.get("data", {}).values()), "")
        c.check(f'url = "http://loki:{LOKI_PORT}/loki/api/v1/push"' in text,
                f"{where}: alloy-config must push to http://loki:{LOKI_PORT}/loki/api/v1/push")  # fmt: skip
        compose_json = alloy_block((C.ROOT / "docker/alloy/config.alloy").read_text(), 'loki.process "json"')
        c.check(compose_json is not None and alloy_block(text, 'loki.process "json"') == compose_json,
                f"{where}: alloy-config's loki.process \"json\" must be docker/alloy/config.alloy's (the same parsing)")  # fmt: skip
    loki_cm = generated(docs, "loki-config")
    c.check(loki_cm is not None and next(iter(loki_cm.get("data", {}).values()), None) == (C.ROOT / "docker/loki/loki.yaml").read_text(),
            f"{where}: ConfigMap loki-config must be docker/loki/loki.yaml (compose's)")  # fmt: skip
    alloy_labels, grafana = pod_labels(alloy), C.k8s_find(docs, "Deployment", "grafana")
    loki_labels, loki_ports = pod_labels(loki), container_ports(loki)
    c.check(C.k8s_allows(docs, "Ingress", loki_labels, alloy_labels, LOKI_PORT, loki_ports),
            f"{where}: Loki's NetworkPolicy does not admit Alloy on {LOKI_PORT}")  # fmt: skip
    if grafana is not None:
        c.check(C.k8s_allows(docs, "Ingress", loki_labels, pod_labels(grafana), LOKI_PORT, loki_ports),
                f"{where}: Loki's NetworkPolicy does not admit Grafana on {LOKI_PORT}")  # fmt: skip
        ds = generated(docs, "grafana-datasources")
        text = "\n".join((ds or {}).get("data", {}).values())
        c.check(f"url: http://loki:{LOKI_PORT}" in text, f"{where}: Grafana's datasources must include Loki (http://loki:{LOKI_PORT})")
    for s in C.SERVICES:
        d = C.k8s_find(docs, "Deployment", s)
        if d is not None:
            c.check(not C.k8s_allows(docs, "Ingress", loki_labels, pod_labels(d), LOKI_PORT, loki_ports),
                    f"{where}: Loki's NetworkPolicy admits {s}")  # fmt: skip


def alloy_block(text: str, header: str) -> str | None:
    """The body of an Alloy block `header { ... }`, comments and blank lines removed."""
    start = text.find(header + " {")
    if start < 0:
        return None
    depth, i = 0, text.index("{", start)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            body = text[i + 1:j]
            return "\n".join(ln.strip() for ln in body.splitlines() if ln.strip() and not ln.strip().startswith("//"))
    return None
