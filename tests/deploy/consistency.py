#!/usr/bin/env python3
"""Checks that the deployment files agree with the code and with each other.

usage: consistency.py --compose-json FILE --k8s NAME=FILE [--k8s NAME=FILE ...]
       consistency.py --write-dashboard-rules FILE   (every dashboard query as a rule, for promtool)

The compose file and the Kubernetes overlays are passed already rendered (by `docker compose
config --format json` and `kubectl kustomize`), so anchors, generators and patches are resolved
the way the real tools resolve them. The code side is read from the sources:

- CIM_* variables and their defaults: the VARS table in crates/cim-runtime/src/config.rs
- service ports: the defaults of CIM_<SERVICE>_ADDR and CIM_<SERVICE>_ADMIN_ADDR there
- metric names: string constants in crates/*/src/**/metrics.rs and literals in metrics macros
- packages and binaries: crates/*/Cargo.toml

Prints one line per failed check (and a summary); exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import exporters  # noqa: E402  (the infrastructure exporters: one table, shared with live_metrics.py)

# The services deployed as their own image. A new service goes here first: the check then names
# every file that still lacks it.
SERVICES = ["gateway", "websocket", "graph", "document", "workflow", "agent", "webhook"]
# Services the code builds that are deliberately not deployed yet, each with the reason. Their
# image, compose service, k8s manifests, NATS user and Postgres role are missing, so nothing may
# call them in a deployment: `cim serve` runs them locally. Empty this as each one is deployed.
UNDEPLOYED: dict[str, str] = {}

# Series Prometheus makes itself; dashboards and rules may use them.
PROMETHEUS_BUILTIN = {
    "up",
    "ALERTS",
    "ALERTS_FOR_STATE",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
}

ROOT = Path(__file__).resolve().parents[2]


class Checker:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.notes: list[str] = []
        self.checks = 0

    def check(self, ok: bool, message: str) -> bool:
        self.checks += 1
        if not ok:
            self.failures.append(message)
        return ok

    def fail(self, message: str) -> None:
        self.check(False, message)


# --- the code --------------------------------------------------------------------------------


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def code_vars() -> dict[str, str | None]:
    """VARS as name -> default."""
    text = (ROOT / "crates/cim-runtime/src/config.rs").read_text()
    consts = dict(re.findall(r'pub const (\w+): &str = "([^"]+)";', text))
    block = text[text.index("pub const VARS") :]
    block = block[: block.index("\n];")]

    def name(token: str) -> str:
        return token.strip('"') if token.startswith('"') else consts[token]

    out: dict[str, str | None] = {}
    default = r'(?:Some\(\s*"([^"]*)"\s*\)|None)'
    for tok, dflt in re.findall(r'\bvar\(\s*(\w+|"[^"]+")\s*,\s*' + default, block):
        out[name(tok)] = dflt or None
    for tok, dflt in re.findall(r'name:\s*(\w+|"[^"]+")\s*,\s*default:\s*' + default, block):
        out[name(tok)] = dflt or None
    if not out:
        raise SystemExit("consistency.py: found no VARS entries in config.rs (did its layout change?)")
    return out


def code_secret_vars() -> set[str]:
    """The VARS marked secret (`secret: Secrecy::...` other than Public): each may also be given
    as <NAME>_FILE, the path of a file holding the value (crates/cim-runtime/src/config.rs)."""
    text = (ROOT / "crates/cim-runtime/src/config.rs").read_text()
    consts = dict(re.findall(r'pub const (\w+): &str = "([^"]+)";', text))
    block = text[text.index("pub const VARS") :]
    block = block[: block.index("\n];")]
    out = set()
    for tok, secrecy in re.findall(r"name:\s*(\w+|\"[^\"]+\")\s*,.*?secret:\s*Secrecy::(\w+)", block, re.S):
        if secrecy != "Public":
            out.add(tok.strip('"') if tok.startswith('"') else consts[tok])
    if not out:
        raise SystemExit("consistency.py: found no secret VARS in config.rs (did its layout change?)")
    return out


def with_files(names) -> list[str]:
    """`names` and the <NAME>_FILE form of each secret among them."""
    secrets = code_secret_vars()
    return [f for n in names for f in ([n, f"{n}_FILE"] if n in secrets else [n])]


def code_ports(vars_: dict[str, str | None]) -> dict[str, tuple[int, int]]:
    """service -> (port, admin port), from the defaults of CIM_<SERVICE>_ADDR / _ADMIN_ADDR."""
    ports = {}
    for name, default in vars_.items():
        m = re.fullmatch(r"CIM_([A-Z]+)_ADDR", name)
        if m and default:
            service = m.group(1).lower()
            admin = vars_.get(f"CIM_{m.group(1)}_ADMIN_ADDR")
            if admin:
                ports[service] = (int(default.rsplit(":", 1)[1]), int(admin.rsplit(":", 1)[1]))
    return ports


def code_metrics() -> tuple[set[str], set[str], set[str]]:
    """(every metric name, histograms with buckets, histograms rendered as summaries).

    metrics-exporter-prometheus renders a histogram with buckets only when a bucket Matcher
    covers its name; any other histogram becomes a summary (quantile label, _sum, _count)."""
    names: set[str] = set()
    histograms: set[str] = set()
    consts: dict[str, str] = {}
    for path in ROOT.glob("crates/*/src/**/*.rs"):
        text = path.read_text()
        macros = re.findall(r'\b(counter|gauge|histogram|describe_\w+)!\(\s*(\w+|"[^"]+")', text)
        # Names live in metrics.rs, or (the gateway's) beside the code that records them: there a
        # constant counts only when a metrics macro in the same file uses it, so other cim_*
        # strings (the session cookie's name) are not taken for metrics.
        used = {arg for _, arg in macros}
        for const, value in re.findall(r'const (\w+): &str = "(cim_[a-z0-9_]+)"', text):
            if path.name == "metrics.rs" or const in used:
                consts[const] = value
                names.add(value)
        for macro, arg in macros:
            value = arg.strip('"') if arg.startswith('"') else None
            if value and value.startswith("cim_"):
                names.add(value)
            if "histogram" in macro:
                histograms.add(value or arg)
    histograms = {consts.get(h, h) for h in histograms} & names
    recorder = (ROOT / "crates/cim-runtime/src/metrics.rs").read_text()
    matchers = re.findall(r'Matcher::(Full|Prefix|Suffix)\(\s*"([^"]+)"', recorder)

    def bucketed(name: str) -> bool:
        return any(
            (kind == "Full" and name == v)
            or (kind == "Prefix" and name.startswith(v))
            or (kind == "Suffix" and name.endswith(v))
            for kind, v in matchers
        )

    with_buckets = {h for h in histograms if bucketed(h)}
    return names, with_buckets, histograms - with_buckets


def cargo_packages() -> dict[str, dict]:
    """package name -> {dir, bins}."""
    out = {}
    for manifest in ROOT.glob("crates/*/Cargo.toml"):
        text = manifest.read_text()
        m = re.search(r'^\[package\][^\[]*?^name\s*=\s*"([^"]+)"', text, re.M | re.S)
        if not m:
            continue
        bins = set(re.findall(r'^\[\[bin\]\][^\[]*?^name\s*=\s*"([^"]+)"', text, re.M | re.S))
        if (manifest.parent / "src/main.rs").exists():
            bins.add(m.group(1))
        out[m.group(1)] = {"dir": manifest.parent, "bins": bins}
    return out


# --- PromQL ----------------------------------------------------------------------------------

PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "inf", "nan", "Inf", "NaN",
}  # fmt: skip


def promql_metrics(expr: str) -> set[str]:
    """Metric names an expression selects (label names, functions and keywords removed)."""
    m = re.fullmatch(r"\s*label_values\(\s*(.*)\)\s*", expr, re.S)
    if m:
        # label_values(selector, label) or label_values(label)
        parts = m.group(1).rsplit(",", 1)
        return promql_metrics(parts[0]) if len(parts) == 2 else set()
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)
    found = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word in PROMQL_KEYWORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        found.add(word)
    return found


def metric_known(name: str, names: set[str], buckets: set[str], summaries: set[str]) -> bool:
    if name in names or name in PROMETHEUS_BUILTIN or name in exporters.exporter_metrics():
        return True
    m = re.fullmatch(r"(.*)_(bucket|sum|count)", name)
    if not m:
        return False
    base, suffix = m.groups()
    return base in buckets or (base in summaries and suffix != "bucket")


# Grafana's variables, replaced by values that keep the expression valid PromQL.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable of every dashboard."""
    out = []
    for path in sorted((ROOT / "monitoring/grafana/dashboards").glob("*.json")):
        d = json.loads(path.read_text())
        panels = [q for p in d.get("panels", []) for q in [p, *p.get("panels", [])]]
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((f"{rel(path)} panel '{p.get('title')}' {t.get('refId')}", t["expr"]))
    return out


def grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)  # template variables are used as regexes


def write_dashboard_rules(out: Path) -> None:
    """Every dashboard expression as a recording rule, so `promtool check rules` parses them;
    a comment above each names the panel."""
    lines = ["groups:", "  - name: dashboards", "    rules:"]
    for i, (where, expr) in enumerate(dashboard_expressions()):
        lines += [
            f"      # {where}",
            f"      - record: dashboard:expr_{i}",
            f"        expr: {json.dumps(grafana_to_promql(expr))}",
        ]
    out.write_text("\n".join(lines) + "\n")


# --- helpers ---------------------------------------------------------------------------------


def port_of(addr: str) -> int | None:
    try:
        return int(str(addr).rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None


def image_base(image: str) -> str:
    """registry/path/name:tag@digest -> name"""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[0]


def image_tag(image: str) -> str:
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


def duration_seconds(text: str) -> float:
    total = 0.0
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(text)):
        total += float(value) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def dockerfile(path: Path) -> dict:
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    out: dict = {"expose": set(), "env": {}, "text": text}
    for ln in lines:
        word, _, rest = ln.partition(" ")
        word = word.upper()
        if word == "EXPOSE":
            out["expose"] |= {int(p.split("/")[0]) for p in rest.split()}
        elif word == "HEALTHCHECK":
            out["healthcheck"] = rest
        elif word == "ENTRYPOINT":
            out["entrypoint"] = rest
        elif word == "ENV":
            for k, v in re.findall(r"(\w+)=(\S+)", rest):
                out["env"][k] = v
        elif word == "RUN" and "cargo build" in rest:
            m = re.search(r"-p\s+(\S+)\s+--bin\s+(\S+)", rest)
            if m:
                out["package"], out["bin"] = m.groups()
        elif word == "LABEL":
            m = re.search(r'org\.opencontainers\.image\.title="([^"]+)"', rest)
            if m:
                out["title"] = m.group(1)
    return out


def k8s_docs(path: Path) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def k8s_index(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def k8s_find(docs: list[dict], kind: str, name: str) -> dict | None:
    """By name, ignoring a generator's hash suffix."""
    for d in docs:
        n = d["metadata"]["name"]
        if d["kind"] == kind and (n == name or re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}", n)):
            return d
    return None


# Workloads whose pods the checks look into, and where their pod template is.
WORKLOADS = ("Deployment", "StatefulSet", "Job", "CronJob")


def pod_template(doc: dict) -> dict:
    """The pod template of a Deployment, StatefulSet, Job or CronJob."""
    spec = doc["spec"]
    return spec["jobTemplate"]["spec"]["template"] if doc["kind"] == "CronJob" else spec["template"]


def selector_matches(selector: dict | None, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector against a pod's labels ({} selects every pod)."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        ok = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]  # fmt: skip
        if not ok:
            return False
    return True


def k8s_allows(docs: list[dict], direction: str, pod: dict[str, str], peer: dict[str, str], port: int,
               port_names: dict[str, int]) -> bool:  # fmt: skip
    """Whether the namespace's NetworkPolicies let a pod (labels `pod`) send (direction "Egress")
    to, or receive ("Ingress") from, another pod of the namespace (labels `peer`) on TCP `port`,
    with Kubernetes' semantics: allowed when no policy selecting the pod covers that direction,
    else when a rule of one of them admits the peer and the port. `port_names` resolves named
    ports (the receiving pod's container ports)."""
    rules_key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    covering = []
    for pol in docs:
        if pol["kind"] != "NetworkPolicy":
            continue
        spec = pol["spec"]
        types = spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))
        if direction in types and selector_matches(spec.get("podSelector"), pod):
            covering.append(spec)
    if not covering:
        return True

    def peer_ok(peers: list | None) -> bool:
        if not peers:
            return True
        for p in peers:
            ns = p.get("namespaceSelector")
            if "ipBlock" in p or ns not in (None, {}):
                continue  # addresses, or namespaces chosen by label: not a pod of this namespace
            if "podSelector" not in p or selector_matches(p["podSelector"], peer):
                return True
        return False

    def port_ok(ports: list | None) -> bool:
        if not ports:
            return True
        for p in ports:
            if p.get("protocol", "TCP") != "TCP":
                continue
            first = p.get("port")
            if first is None:
                return True
            first = port_names.get(first) if isinstance(first, str) else first
            if first is not None and first <= port <= p.get("endPort", first):
                return True
        return False

    return any(peer_ok(r.get(peers_key)) and port_ok(r.get("ports")) for spec in covering
               for r in spec.get(rules_key) or [])  # fmt: skip


def secret_values(doc: dict) -> dict[str, str]:
    out = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
    out.update(doc.get("stringData") or {})
    return out


# --- the design: what each service uses, and the network flows it needs ------------------------
#
# Read from the code, so the deployment files (and scripts/rehearse.sh, which builds its firewall
# from design_flows) follow the services instead of a hand-kept list.

# The stores in compose and Kubernetes, and the port each serves.
STORES = {"postgres": 5432, "nats": 4222, "redis": 6379, "minio": 9000}
LOAD_BALANCER = "nginx"
# Where Prometheus sends alerts: compose's service and the k8s Deployment/Service of this name.
ALERTMANAGER = "alertmanager"
ALERTMANAGER_PORT = 9093
# Services that call URLs outside the deployment (the webhook service's receivers): the compose
# network they leave by (joined by nothing else) and the TCP ports they may call. In Kubernetes
# their NetworkPolicy allows those ports to public addresses only (check_outbound_policies).
OUTBOUND = {"webhook": ("egress", (80, 443))}
# What an outbound service's NetworkPolicy must keep it from (server-side request forgery): the
# private, shared (CGNAT), loopback, link-local (cloud metadata), multicast and reserved ranges,
# where pods, Services, nodes and metadata endpoints live.
OUTBOUND_BLOCKED = {
    "0.0.0.0/0": {"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
                  "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4"},
    "::/0": {"::ffff:0:0/96", "64:ff9b::/96", "fc00::/7", "fe80::/10", "ff00::/8"},
}  # fmt: skip
# The scheduled `cim backup`: compose's service (profile backup), k8s CronJob cim-<it>, its
# Postgres role, MinIO user and Secret backup-secrets.
BACKUP = "backup"
# What a crate's sources call when the service uses a store or verifies bearer tokens.
USES_PATTERNS = {
    "postgres": r"\bpostgres::connect\b",
    "nats": r"\bnats::connect\b",
    "redis": r"\bredis::connect\w*\b",
    "minio": r"\bObjects::open\b",
    "jwt": r"\bVerifier::from_settings\b",
    # The services' shared key: domain services (through the kit's DomainHost) check caller
    # signatures with it, the gateway and workflow sign with it; the websocket calls no service.
    "service_key": r"\bservice_identity\b",
}
# Library code that connects on a service's behalf: a crate calling the entry point uses the
# stores that file connects to (the domain kit's DomainHost opens Postgres and NATS for every
# domain service; the service's own crate adds what else it uses, the object store for instance).
KIT_ENTRY_POINTS = {r"\bDomainHost::connect\b": "crates/cim-aggregate/src/host.rs"}
# The variables that carry a store's address and credentials, by store.
STORE_VARS = {
    "postgres": ["CIM_DATABASE_URL"],
    "nats": ["CIM_NATS_URL"],
    "redis": ["CIM_REDIS_URL"],
    "minio": ["CIM_OBJECT_STORE_URL", "CIM_S3_ENDPOINT", "CIM_S3_ACCESS_KEY_ID", "CIM_S3_SECRET_ACCESS_KEY"],
    "jwt": ["CIM_JWT_HS256_SECRET", "CIM_JWT_PUBLIC_KEY_FILE", "CIM_JWT_JWKS_URL"],
    "service_key": ["CIM_SERVICE_TOKEN_SECRET"],
}

_USES: dict[str, frozenset[str]] = {}


def service_crate(service: str) -> Path | None:
    """The crate that builds cim-<service>."""
    for info in cargo_packages().values():
        if f"cim-{service}" in info["bins"]:
            return info["dir"]
    return None


def service_uses(service: str) -> frozenset[str]:
    """Which of postgres, nats, redis, minio (object store) and jwt the service's crate uses."""
    if service not in _USES:
        crate = service_crate(service)
        text = "\n".join(p.read_text() for p in sorted(crate.glob("src/**/*.rs"))) if crate else ""
        for entry, path in KIT_ENTRY_POINTS.items():
            if re.search(entry, text):
                text += "\n" + (ROOT / path).read_text()
        _USES[service] = frozenset(k for k, pat in USES_PATTERNS.items() if re.search(pat, text))
    return _USES[service]


def edge_services() -> list[str]:
    """Services that verify bearer tokens: the load balancer's upstreams."""
    return [s for s in SERVICES if "jwt" in service_uses(s)]


def required_vars(service: str, vars_: dict[str, str | None]) -> list[tuple[str, ...]]:
    """What a deployment must set for the service to start and find its stores: each entry is a
    set of alternatives (one of them must be set). A default naming 127.0.0.1 is no address in a
    deployment, so such a variable of the service (or of a store it uses) is required too."""
    up = service.upper()
    out: list[tuple[str, ...]] = [(f"CIM_{up}_ADDR",), (f"CIM_{up}_ADMIN_ADDR",)]
    uses = service_uses(service)
    for store in ("postgres", "nats", "redis"):
        if store in uses:
            out.append(tuple(with_files([STORE_VARS[store][0]])))
    if "jwt" in uses:
        out.append(tuple(with_files(STORE_VARS["jwt"])))
    if "minio" in uses:
        # Its default, a local directory, is in the container's read-only root and not shared by
        # the replicas: a deployment names its bucket.
        out.append((STORE_VARS["minio"][0],))
    for name, default in vars_.items():
        callee = re.fullmatch(rf"CIM_{up}_([A-Z]+)_URLS", name)
        if callee and callee.group(1).lower() in UNDEPLOYED:
            continue
        if name.startswith(f"CIM_{up}_") and default and ("127.0.0.1" in default or "localhost" in default):
            if (name,) not in out:
                out.append((name,))
    return out


def unused_vars(service: str) -> list[str]:
    """Credentials and addresses of stores the service never connects to: they must not be given."""
    uses = service_uses(service)
    return [v for store, names in STORE_VARS.items() if store not in uses for v in with_files(names)]


def service_urls(vars_: dict[str, str | None]) -> list[tuple[str, str, str]]:
    """(caller, callee, variable) for every CIM_<CALLER>_<CALLEE>_URLS the code reads: the gRPC
    calls one deployed service makes to another (the gateway's upstreams, the services workflow
    steps call). CALLEE `SELF` is the caller's own replicas (CIM_WORKFLOW_SELF_URLS)."""
    out = []
    for name in vars_:
        m = re.fullmatch(r"CIM_([A-Z]+)_([A-Z]+)_URLS", name)
        if m:
            caller = m.group(1).lower()
            callee = caller if m.group(2) == "SELF" else m.group(2).lower()
            if caller in SERVICES and callee in SERVICES:
                out.append((caller, callee, name))
    return out


def design_flows(vars_: dict[str, str | None]) -> list[tuple[str, str, int, str]]:
    """Every connection the design allows, as (from, to, port, network); everything else is
    refused. From the docs: public → the load balancer only; the services of OUTBOUND → `outside`
    on their own network (the webhook service's receivers); load balancer → the edges; a service
    → the services its CIM_<SERVICE>_<CALLEE>_URLS name, on their gRPC port (the edges → the
    domain services; workflow → graph, document, agent and its own replicas); each service → the
    stores it uses (data); Prometheus → admin ports and Alertmanager (monitoring); Grafana →
    Prometheus and Loki,
    Alloy → Loki. `outside` is the world reaching the load balancer's published port."""
    ports = code_ports(vars_)
    edges = edge_services()
    flows = [("outside", LOAD_BALANCER, 80, "public")]
    for s, (net, out_ports) in OUTBOUND.items():
        if s in SERVICES:
            flows += [(s, "outside", p, net) for p in out_ports]
    for e in edges:
        flows.append((LOAD_BALANCER, e, ports[e][0], "application"))
    for caller, callee, _ in service_urls(vars_):
        flows.append((caller, callee, ports[callee][0], "application"))
    for s in SERVICES:
        for store in sorted(service_uses(s) & STORES.keys()):
            flows.append((s, store, STORES[store], "data"))
    flows.append(("minio-init", "minio", STORES["minio"], "data"))
    # The scheduled backup (compose profile backup, k8s CronJob cim-backup) reads Postgres and
    # writes to MinIO.
    flows += [(BACKUP, "postgres", STORES["postgres"], "data"), (BACKUP, "minio", STORES["minio"], "data")]
    for s in SERVICES:
        flows.append(("prometheus", s, ports[s][1], "monitoring"))
    flows += [
        ("prometheus", ALERTMANAGER, ALERTMANAGER_PORT, "monitoring"),
        ("grafana", "prometheus", 9090, "monitoring"),
        ("grafana", "loki", 3100, "monitoring"),
        ("alloy", "loki", 3100, "monitoring"),
    ]
    # The infrastructure exporters (tests/deploy/exporters.py): each reads its store on the data
    # network and is scraped on monitoring; MinIO is scraped itself. The blackbox exporter also
    # probes the load balancer's HTTPS port from the public side, as a client would.
    for e in exporters.EXPORTERS.values():
        flows.append(("prometheus", e.host, e.port, "monitoring"))
        if e.store:
            flows.append((e.host, e.store, e.store_port, "data"))
    flows.append(("blackbox-exporter", LOAD_BALANCER, 443, "public"))
    return flows


def check_s3_env(c: Checker, service: str, env: dict[str, str], setup: dict, key: str | None, where: str) -> None:
    """A service using MinIO: a bucket the set-up creates, on the minio server, as its own user
    with the secret key the set-up gives that user (`key`; None: not known here)."""
    url = env.get("CIM_OBJECT_STORE_URL", "")
    m = re.fullmatch(r"s3://([a-z0-9.-]+)(/.*)?", url)
    if not c.check(m is not None, f"{where}: CIM_OBJECT_STORE_URL={url or '(unset)'}, expected s3://<bucket>"):
        return
    c.check(m.group(1) in setup["buckets"], f"{where}: bucket {m.group(1)} is not one MinIO's set-up creates")
    endpoint = urlsplit(env.get("CIM_S3_ENDPOINT", ""))
    c.check(
        endpoint.hostname == "minio" and endpoint.port == STORES["minio"],
        f"{where}: CIM_S3_ENDPOINT={env.get('CIM_S3_ENDPOINT')}, expected http://minio:{STORES['minio']}",
    )
    c.check(
        env.get("CIM_S3_ACCESS_KEY_ID") == service,
        f"{where}: CIM_S3_ACCESS_KEY_ID={env.get('CIM_S3_ACCESS_KEY_ID')}, expected its own MinIO user {service}",
    )
    if key is not None:
        c.check(
            env.get("CIM_S3_SECRET_ACCESS_KEY") == key,
            f"{where}: CIM_S3_SECRET_ACCESS_KEY differs from the key MinIO's set-up gives user {service}",
        )


def check_service_env(c: Checker, service: str, env: dict[str, str], vars_: dict, where: str) -> None:
    """Every variable the service needs at start is set; no credential of a store it never uses."""
    for alts in required_vars(service, vars_):
        c.check(
            any(env.get(v) for v in alts),
            f"{where}: {' or '.join(alts)} not set ({service} {'exits at start' if len(alts) > 1 else 'needs it'})",
        )
    for var in unused_vars(service):
        c.check(not env.get(var), f"{where}: sets {var}, but {service} never uses it (an unused credential)")
    # The services it calls (CIM_<SERVICE>_<CALLEE>_URLS): that service's host and gRPC port.
    ports = code_ports(vars_)
    for caller, up, var in service_urls(vars_):
        if caller != service or var not in env or up not in ports:
            continue
        port = ports[up][0]
        # https:// (TLS, mTLS between services) needs the CA to check the callee against.
        scheme = "https" if env.get("CIM_TLS_CA_FILE") else "http"
        for url in str(env[var]).split(","):
            u = urlsplit(url.strip())
            c.check(
                u.scheme == scheme and u.hostname == up and u.port == port,
                f"{where}: {var} has {url.strip()}, expected {scheme}://{up}:{port} (the {up} service"
                f"{', over TLS: CIM_TLS_CA_FILE is set' if scheme == 'https' else ''})",
            )


SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|_KEY_ID$")


def compose_interpolations(text: str) -> list[tuple[str, str]]:
    """(variable, operator) of every ${...} in compose.yaml; operator is '', ':-', '-', ':?' or '?'."""
    text = text.replace("$$", "")
    return [(m.group(1), m.group(2) or "") for m in re.finditer(r"\$\{([A-Za-z0-9_]+)(:?[-?+])?[^}]*\}", text)]


def production_secret_list(text: str) -> dict[str, list[str]]:
    """The Secrets the production overlay's comment says must exist, with their keys."""
    out: dict[str, list[str]] = {}
    for m in re.finditer(r"^#\s+([a-z0-9][a-z0-9-]*):\s+([A-Za-z0-9_.]+(?:,\s*[A-Za-z0-9_.]+)*)\s*$", text, re.M):
        out[m.group(1)] = [k.strip() for k in m.group(2).split(",")]
    return out


def nats_conf(text: str):
    """A NATS configuration (the subset accounts.conf uses) as Python values."""
    toks = [
        t
        for t in re.findall(r'#[^\n]*|//[^\n]*|"(?:[^"\\]|\\.)*"|[{}\[\],:=]|[^\s{}\[\],:="]+', text)
        if not t.startswith(("#", "//"))
    ]
    pos = 0

    def value():
        nonlocal pos
        t = toks[pos]
        pos += 1
        if t == "{":
            return mapping("}")
        if t == "[":
            out = []
            while toks[pos] != "]":
                if toks[pos] == ",":
                    pos += 1
                    continue
                out.append(value())
            pos += 1
            return out
        return t[1:-1] if t.startswith('"') else t

    def mapping(end):
        nonlocal pos
        out = {}
        while pos < len(toks) and toks[pos] != end:
            if toks[pos] == ",":
                pos += 1
                continue
            key = toks[pos]
            pos += 1
            if key == "include":
                pos += 1
                continue
            if toks[pos] in (":", "="):
                pos += 1
            out[key] = value()
        pos += 1
        return out

    root = mapping(None)

    def resolve(v):
        if isinstance(v, str) and v.startswith("$") and v[1:] in root:
            return resolve(root[v[1:]])
        if isinstance(v, dict):
            return {k: resolve(x) for k, x in v.items()}
        if isinstance(v, list):
            return [resolve(x) for x in v]
        return v

    return resolve(root)


def nats_users(text: str) -> dict[str, dict[str, list[str]]]:
    """user -> {"allow": [...], "deny": [...]} of its publish permissions (None: unrestricted)."""
    conf = nats_conf(text)
    out = {}
    for acc in (conf.get("accounts") or {}).values():
        for u in acc.get("users", []):
            perms = u.get("permissions")
            if perms is None:
                out[u["user"]] = None
                continue
            pub = perms.get("publish", {})
            if isinstance(pub, (list, str)):
                pub = {"allow": pub}
            allow, deny = pub.get("allow", []), pub.get("deny", [])
            out[u["user"]] = {
                "allow": [allow] if isinstance(allow, str) else list(allow),
                "deny": [deny] if isinstance(deny, str) else list(deny),
            }
    return out


def subject_matches(pattern: str, subject: str) -> bool:
    p, t = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(t) > i
        if i >= len(t) or (tok != "*" and tok != t[i]):
            return False
    return len(p) == len(t)


def nats_allowed(perms: dict | None, subject: str) -> bool:
    if perms is None:
        return True
    return any(subject_matches(a, subject) for a in perms["allow"]) and not any(
        subject_matches(d, subject) for d in perms["deny"]
    )


def check_nats_permissions(c: Checker, text: str, prefix: str = "cim") -> None:
    """Least privilege per service user (docker/nats/accounts.conf), probed with concrete subjects."""
    where = "docker/nats/accounts.conf"
    users = nats_users(text)
    domains = [s for s in SERVICES if "postgres" in service_uses(s) and s not in edge_services()]
    streams = {d: f"{prefix.upper()}_{d.upper()}" for d in domains}
    dlq = f"{prefix.upper()}_DLQ"
    # Durable consumers: named in a user's CONSUMER.CREATE.<stream>.<name>.> or in the code
    # (literals, the gateway's cache invalidator, the workflow listener's consumers).
    durables = {gateway_cache_consumers()[1], *(name for _, name in workflow_listeners() + webhook_intakes())} - {""}
    for path in ROOT.glob("crates/*/src/**/*.rs"):
        durables |= set(re.findall(r'\bdurable\w*\s*[:=]\s*(?:Some\()?"([a-z0-9][a-z0-9-]*)"', path.read_text()))
    for perms in users.values():
        for a in (perms or {}).get("allow", []):
            m = re.fullmatch(r"\$JS\.API\.CONSUMER\.CREATE\.[^.]+\.([^.*>]+)\.>", a)
            if m:
                durables.add(m.group(1))
    for s in SERVICES:
        if "nats" not in service_uses(s) or s not in users:
            continue
        perms = users[s]
        if not c.check(perms is not None, f"{where}: user {s} has no permissions (may do anything)"):
            continue
        for a in perms["allow"]:
            c.check(
                not re.fullmatch(r"(>|\$JS\.>|\$JS\.API\.>|\$JS\.API\.(STREAM|CONSUMER)\.>|\$JS\.API\.STREAM\.\*\..*)", a),
                f"{where}: user {s} allows {a}, a wildcard over the JetStream API (name the operations)",
            )
        every = [*streams.values(), dlq, f"{prefix.upper()}_DOCUMENT", f"{prefix.upper()}_WORKFLOW"]
        for st in every:
            for op in ("DELETE", "PURGE"):
                c.check(
                    not nats_allowed(perms, f"$JS.API.STREAM.{op}.{st}"),
                    f"{where}: user {s} may {op} stream {st} (only an operator, user cim, may)",
                )
            own = st == dlq or (s in streams and streams[s] == st)
            for op in ("CREATE", "UPDATE"):
                if not own:
                    c.check(
                        not nats_allowed(perms, f"$JS.API.STREAM.{op}.{st}"),
                        f"{where}: user {s} may {op} stream {st}, which it does not own",
                    )
        if s in streams:
            for op in ("CREATE", "UPDATE", "INFO"):
                for st in (streams[s], dlq):
                    c.check(nats_allowed(perms, f"$JS.API.STREAM.{op}.{st}"), f"{where}: user {s} cannot {op} {st}")
            c.check(nats_allowed(perms, f"{prefix}.{s}.evt.x.y"), f"{where}: user {s} cannot publish its events")
        for d in domains:
            if d != s:
                c.check(
                    not nats_allowed(perms, f"{prefix}.{d}.evt.x.y"),
                    f"{where}: user {s} may publish {d}'s events ({prefix}.{d}.evt.>)",
                )
        for name in durables:
            for st in streams.values():
                c.check(
                    not nats_allowed(perms, f"$JS.API.CONSUMER.DELETE.{st}.{name}"),
                    f"{where}: user {s} may delete the durable consumer {name} (deny $JS.API.CONSUMER.DELETE.*.{name})",
                )


def gateway_cache_consumers() -> tuple[list[str], str]:
    """The domains whose streams the gateway's response cache consumes (the table
    gateway::cache::CACHED) and its shared invalidator's durable name (cache::invalidate::DURABLE)."""
    src = (ROOT / "crates/gateway/src/cache.rs").read_text()
    table = re.search(r"pub const CACHED: &\[\(&str, Domain\)\] = &\[(.*?)\];", src, re.S)
    domains = sorted({d.lower() for d in re.findall(r"Domain::(\w+)", table.group(1) if table else "")})
    invalidate = (ROOT / "crates/gateway/src/cache/invalidate.rs").read_text()
    durable = re.search(r'pub const DURABLE: &str = "([^"]+)";', invalidate)
    return domains, durable.group(1) if durable else ""


def workflow_listeners() -> list[tuple[str, str]]:
    """(domain, durable name) of every consumer the workflow service's listener runs: one per
    domain of workflow::spec::LISTENED (listen::DOMAINS is that table; the spec refuses filters
    on any other domain), named as Listener::consumers formats it (workflow-listen-<domain>)."""
    src = (ROOT / "crates/workflow/src/listen.rs").read_text()
    spec = (ROOT / "crates/workflow/src/spec/outward.rs").read_text()
    if not re.search(r"pub const DOMAINS: \[Domain; \d+\] = crate::spec::LISTENED;", src):
        return []
    table = re.search(r"pub const LISTENED: \[Domain; \d+\] = \[(.*?)\];", spec, re.S)
    domains = [d.lower() for d in re.findall(r"Domain::(\w+)", table.group(1) if table else "")]
    name = re.search(r'format!\("([a-z0-9-]*)\{domain\}"\)', src)
    return [(d, f"{name.group(1)}{d}") for d in domains] if name else []


def durable_grants(prefix: str, domain: str, durable: str) -> list[tuple[str, str]]:
    """What running a durable pull consumer on a domain's stream publishes (cim_streams::PullLoop
    with Binding::Durable: get_stream, get_or_create_consumer, messages, acks; then dead letters),
    as (what, a concrete subject)."""
    st = f"{prefix.upper()}_{domain.upper()}"
    return [
        ("bind its stream", f"$JS.API.STREAM.INFO.{st}"),
        (f"create {durable}", f"$JS.API.CONSUMER.CREATE.{st}.{durable}.{prefix}.{domain}.evt.>"),
        (f"read {durable}'s info", f"$JS.API.CONSUMER.INFO.{st}.{durable}"),
        (f"pull from {durable}", f"$JS.API.CONSUMER.MSG.NEXT.{st}.{durable}"),
        (f"ack {durable}'s messages", f"$JS.ACK.{st}.{durable}.1.2.3.4.5"),
        ("dead-letter", f"{prefix}.dlq.{durable}"),
    ]


def check_gateway_cache_permissions(c: Checker, text: str, prefix: str = "cim") -> None:
    """The gateway's NATS user can run both cache consumers on the stream of every cached domain
    (a row added to cache::CACHED needs its permissions), and cannot delete the durable one."""
    where = "docker/nats/accounts.conf: user gateway"
    domains, durable = gateway_cache_consumers()
    if not c.check(bool(domains) and bool(durable), "crates/gateway/src/cache: no CACHED table or DURABLE name found"):
        return
    perms = nats_users(text).get("gateway")
    for d in domains:
        st = f"{prefix.upper()}_{d.upper()}"
        for what, subject in [
            *durable_grants(prefix, d, durable),
            ("create its ordered consumer", f"$JS.API.CONSUMER.CREATE.{st}"),
            ("pull from its ordered consumer", f"$JS.API.CONSUMER.MSG.NEXT.{st}.ephemeral"),
            ("delete its old ordered consumer", f"$JS.API.CONSUMER.DELETE.{st}.ephemeral"),
        ]:
            c.check(nats_allowed(perms, subject), f"{where} cannot {what} on {st} ({subject}): cache::CACHED names {d}")
        c.check(
            not nats_allowed(perms, f"$JS.API.CONSUMER.DELETE.{st}.{durable}"),
            f"{where} may delete its durable consumer {durable} on {st}",
        )


def webhook_intakes() -> list[tuple[str, str]]:
    """(domain, durable name) of every consumer the webhook service's intake runs: one per domain
    of cim_core::Domain::ALL (intake::consumers maps over it), named as intake::consumer_name
    formats it (webhook-intake-<domain>)."""
    src = (ROOT / "crates/webhook/src/delivery/intake.rs").read_text()
    names = (ROOT / "crates/cim-core/src/names.rs").read_text()
    if "Domain::ALL" not in src:
        return []
    table = re.search(r"pub const ALL: \[Domain; \d+\] = \[(.*?)\];", names, re.S)
    domains = [d.lower() for d in re.findall(r"Domain::(\w+)", table.group(1) if table else "")]
    name = re.search(r'format!\("([a-z0-9-]*)\{domain\}"\)', src)
    return [(d, f"{name.group(1)}{d}") for d in domains] if name else []


def check_workflow_listener_permissions(c: Checker, text: str, prefix: str = "cim") -> None:
    """The workflow service's NATS user can run each consumer its listener declares (a domain
    added to workflow::spec::LISTENED needs its grants) and nothing more on the streams it reads."""
    listeners = workflow_listeners()
    if c.check(bool(listeners), "crates/workflow/src/listen.rs: no DOMAINS = spec::LISTENED table or consumer name found"):
        check_consumer_permissions(c, text, "workflow", listeners, "workflow::listen", prefix)


def agent_conversation_subjects(prefix: str = "cim") -> dict[str, str]:
    """The core-NATS subjects of conversations (outside the streams), read from the code, each as
    a concrete subject: the forwarded messages and stops of agent::dispatch::relay, and the
    response pieces of cim-core's SubjectPrefix::agent_response."""
    relay = (ROOT / "crates/agent/src/dispatch/relay.rs").read_text()
    core = (ROOT / "crates/cim-core/src/subject.rs").read_text()
    out = {}
    for kind in re.findall(r'format!\("\{\}\.\{\}\.([a-z]+)\.\{tenant\}\.\{(?:agent|message)\}"', relay):
        out[kind] = f"{prefix}.agent.{kind}.t.x"
    for kind in re.findall(r'format!\("\{\}\.\{\}\.([a-z]+)\.\{tenant\}\.\{agent\}\.\{message\}"', core):
        out[kind] = f"{prefix}.agent.{kind}.t.a.m"
    return out


def check_agent_conversation_permissions(c: Checker, text: str, prefix: str = "cim") -> None:
    """The agent service's replicas can forward messages to each other and publish response
    pieces (and answer requests); the websocket can only read the pieces; nobody else either."""
    where = "docker/nats/accounts.conf"
    subjects = agent_conversation_subjects(prefix)
    if not c.check(
        {"converse", "stop", "response"} <= set(subjects),
        f"crates/agent/src/dispatch/relay.rs, crates/cim-core/src/subject.rs: conversation subjects not found ({sorted(subjects)})",
    ):
        return
    users = {}
    for acc in (nats_conf(text).get("accounts") or {}).values():
        for u in acc.get("users", []):
            users[u["user"]] = u.get("permissions") or {}

    def allowed(perms: dict, side: str, subject: str) -> bool:
        rule = perms.get(side, {})
        if isinstance(rule, (list, str)):
            rule = {"allow": rule}
        allow = rule.get("allow", [])
        deny = rule.get("deny", [])
        allow = [allow] if isinstance(allow, str) else allow
        deny = [deny] if isinstance(deny, str) else deny
        return any(subject_matches(a, subject) for a in allow) and not any(subject_matches(d, subject) for d in deny)

    agent = users.get("agent", {})
    for kind, subject in subjects.items():
        for side in ("publish", "subscribe"):
            c.check(allowed(agent, side, subject), f"{where}: user agent cannot {side} {subject} (conversations: {kind})")
    c.check(
        str(agent.get("allow_responses", "")).lower() == "true",
        f"{where}: user agent needs allow_responses: the replica holding a worker answers forwarded messages",
    )
    websocket = users.get("websocket", {})
    c.check(
        allowed(websocket, "subscribe", subjects["response"]),
        f"{where}: user websocket cannot subscribe {subjects['response']} (follow_responses)",
    )
    for name, perms in users.items():
        if name in ("agent", "cim", "sys") or not perms:
            continue
        for kind, subject in subjects.items():
            c.check(
                not allowed(perms, "publish", subject),
                f"{where}: user {name} may publish {subject}: only the agent service writes conversations ({kind})",
            )


def check_webhook_intake_permissions(c: Checker, text: str, prefix: str = "cim") -> None:
    """The webhook service's NATS user can run its intake's consumer on every domain stream (a
    domain added to Domain::ALL needs its grants) and dead-letter a delivery (cim.dlq.webhook)."""
    intakes = webhook_intakes()
    if not c.check(bool(intakes), "crates/webhook/src/delivery/intake.rs: no Domain::ALL or consumer name found"):
        return
    check_consumer_permissions(c, text, "webhook", intakes, "webhook::delivery::intake", prefix, extra_dlq={"webhook"})
    src = (ROOT / "crates/webhook/src/delivery.rs").read_text()
    m = re.search(r'pub const DEAD_LETTER_CONSUMER: &str = "([^"]+)";', src)
    if c.check(m is not None, "crates/webhook/src/delivery.rs: no DEAD_LETTER_CONSUMER"):
        c.check(
            nats_allowed(nats_users(text).get("webhook"), f"{prefix}.dlq.{m.group(1)}"),
            f"docker/nats/accounts.conf: user webhook cannot dead-letter a delivery ({prefix}.dlq.{m.group(1)})",
        )


def check_consumer_permissions(c: Checker, text: str, user: str, consumers: list[tuple[str, str]], source: str,
                               prefix: str = "cim", extra_dlq: frozenset[str] | set[str] = frozenset()) -> None:  # fmt: skip
    """`user` can run each durable consumer its code declares and nothing more on the streams it
    reads: no other consumer, no ephemeral one, no delete. Every consumer grant it holds names one
    of those consumers (the two lists agree both ways); `extra_dlq`: other dead-letter subjects
    its code publishes."""
    where = f"docker/nats/accounts.conf: user {user}"
    listeners = consumers
    perms = nats_users(text).get(user)
    for d, durable in listeners:
        st = f"{prefix.upper()}_{d.upper()}"
        for what, subject in durable_grants(prefix, d, durable):
            c.check(
                nats_allowed(perms, subject),
                f"{where} cannot {what} on {st} ({subject}): {source} names {d}",
            )
        for what, subject in [
            ("create another durable", f"$JS.API.CONSUMER.CREATE.{st}.other.{prefix}.{d}.evt.>"),
            ("create an ephemeral consumer", f"$JS.API.CONSUMER.CREATE.{st}"),
            ("pull from another consumer", f"$JS.API.CONSUMER.MSG.NEXT.{st}.other"),
            (f"delete {durable}", f"$JS.API.CONSUMER.DELETE.{st}.{durable}"),
        ]:
            c.check(
                not nats_allowed(perms, subject),
                f"{where} may {what} on {st} ({subject}); {source} runs only {durable} there",
            )
    declared = {(f"{prefix.upper()}_{d.upper()}", n) for d, n in listeners}
    for a in (perms or {}).get("allow", []):
        m = re.fullmatch(r"\$JS\.(?:API\.CONSUMER\.(?:CREATE|INFO|MSG\.NEXT)|ACK)\.([^.]+)\.([^.]+)(?:\.>)?", a)
        if m:
            c.check(
                (m.group(1), m.group(2)) in declared,
                f"{where} allows {a}, but {source} runs no consumer {m.group(2)} on {m.group(1)} "
                f"({', '.join(n for _, n in sorted(declared))})",
            )
        m = re.fullmatch(rf"{re.escape(prefix)}\.dlq\.([^.]+)", a)
        if m:
            c.check(
                m.group(1) in {n for _, n in declared} | set(extra_dlq),
                f"{where} allows {a}, the dead letters of a consumer it does not run",
            )


def check_outbound_policies(c: Checker, overlays: dict[str, list[dict]]) -> None:
    """Only the services of OUTBOUND leave the cluster, and only to public addresses on their
    ports: their NetworkPolicy has an ipBlock rule per address family of OUTBOUND_BLOCKED whose
    `except` holds every blocked range, on exactly their TCP ports; no ipBlock elsewhere in a CIM
    service's policy. (k8s_allows, for calls between pods, ignores ipBlock peers.)"""
    for overlay, docs in overlays.items():
        for s in SERVICES:
            pol = k8s_find(docs, "NetworkPolicy", s)
            if pol is None:
                continue
            where = f"k8s {overlay}: NetworkPolicy {s}"
            blocks = []
            for rule in pol["spec"].get("egress") or []:
                peers = [p["ipBlock"] for p in rule.get("to") or [] if "ipBlock" in p]
                if not peers:
                    continue
                ports = sorted((p.get("protocol", "TCP"), p.get("port"), p.get("endPort")) for p in rule.get("ports") or [])
                blocks += [(b, ports) for b in peers]
                c.check(
                    len(peers) == len(rule.get("to") or []),
                    f"{where}: an egress rule mixes ipBlock and pod peers (its ports would open both)",
                )
            if s not in OUTBOUND:
                c.check(not blocks, f"{where}: egress to addresses (ipBlock), but {s} calls nothing outside")
                continue
            want_ports = sorted(("TCP", p, None) for p in OUTBOUND[s][1])
            have = {b["cidr"]: (set(b.get("except") or []), ports) for b, ports in blocks}
            c.check(
                set(have) == set(OUTBOUND_BLOCKED),
                f"{where}: ipBlock cidrs {sorted(have)}, expected {sorted(OUTBOUND_BLOCKED)} (receivers anywhere public)",
            )
            for cidr, blocked in OUTBOUND_BLOCKED.items():
                excepted, ports = have.get(cidr, (set(), []))
                for r in sorted(blocked - excepted):
                    c.fail(f"{where}: {cidr} does not except {r}: {s} could be made to call into it (SSRF)")
                if cidr in have:
                    c.check(ports == want_ports, f"{where}: egress to {cidr} on {ports}, expected TCP {OUTBOUND[s][1]}")


# KEDA (the serverless overlay): the ScaledObject schema (tests/deploy/keda/, from KEDA's CRD) and
# the metadata each scaler used here documents (https://keda.sh/docs/latest/scalers/): required,
# then optional keys. A key outside both is a typo KEDA would ignore.
KEDA_SCHEMA = "tests/deploy/keda/scaledobject.schema.json"
KEDA_SCALERS = {
    "nats-jetstream": ({"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"},
                       {"activationLagThreshold", "useHttps"}),
    "postgresql": ({"query", "targetQueryValue"},
                   {"activationTargetQueryValue", "connectionFromEnv", "host", "port", "userName", "dbName", "sslmode",
                    "passwordFromEnv"}),
}  # fmt: skip
# Overlays whose Secrets an operator creates (production's kustomization lists them); the others
# generate development ones.
OPERATOR_SECRETS = {"production", "serverless"}


def service_consumers() -> dict[str, list[tuple[str, str]]]:
    """service -> (domain, durable name) of the durable consumers its code runs on domain streams."""
    return {"workflow": workflow_listeners(), "webhook": webhook_intakes()}


def check_scaled_objects(c: Checker, overlays: dict[str, list[dict]], accounts: str) -> None:
    """Every KEDA ScaledObject is valid against KEDA's schema and scales a CIM service's
    Deployment (no HPA of its own left beside it) from zero, on real work: each nats-jetstream
    trigger names a stream, a durable consumer that service runs on it, the NATS account holding
    that service's user and a Service exposing NATS' monitoring port; each postgresql trigger
    reads, with the service's own database URL, a table of the service's own schema. What cannot
    be checked here: KEDA itself (its operator, metrics adapter, the scalers' behaviour), that the
    operator reaches NATS and Postgres in a real cluster, and the cluster's DNS name."""
    import jsonschema

    schema = json.loads((ROOT / KEDA_SCHEMA).read_text())
    conf = nats_conf(accounts)
    account_of = {u["user"]: name for name, acc in (conf.get("accounts") or {}).items() for u in acc.get("users", [])}
    consumers = service_consumers()
    for overlay, docs in overlays.items():
        for so in (d for d in docs if d.get("kind") == "ScaledObject"):
            where = f"k8s {overlay}: ScaledObject {so['metadata']['name']}"
            for e in sorted(jsonschema.Draft202012Validator(schema).iter_errors(so), key=lambda e: list(e.path)):
                c.fail(f"{where}: {'/'.join(map(str, e.path)) or '(root)'}: {e.message} ({KEDA_SCHEMA})")
            spec = so.get("spec") or {}
            ref = spec.get("scaleTargetRef") or {}
            s = ref.get("name")
            dep = k8s_find(docs, "Deployment", s or "")
            if not c.check(
                ref.get("kind", "Deployment") == "Deployment" and dep is not None and s in SERVICES,
                f"{where}: scales {ref.get('kind', 'Deployment')} {s}, not a CIM service's Deployment",
            ):
                continue
            c.check(spec.get("minReplicaCount") == 0, f"{where}: minReplicaCount must be 0 (scale to zero)")
            for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
                c.check(
                    hpa["spec"]["scaleTargetRef"].get("name") != s,
                    f"{where}: HorizontalPodAutoscaler {hpa['metadata']['name']} also scales {s} (KEDA makes its own)",
                )
            ctr = dep["spec"]["template"]["spec"]["containers"][0]
            env_names = {e["name"] for e in ctr.get("env", [])}
            for src in ctr.get("envFrom", []):
                ref_name = (src.get("configMapRef") or src.get("secretRef") or {}).get("name", "")
                kind = "ConfigMap" if "configMapRef" in src else "Secret"
                doc = k8s_find(docs, kind, ref_name)
                if doc is not None:
                    env_names |= set(doc.get("data") or {}) if kind == "ConfigMap" else set(secret_values(doc))
                elif kind == "Secret" and overlay in OPERATOR_SECRETS:
                    env_names |= set(production_secret_list(
                        (ROOT / "k8s/overlays/production/kustomization.yaml").read_text()).get(ref_name, []))
            runs = {(f"CIM_{d.upper()}", n) for d, n in consumers.get(s, [])}
            kinds = set()
            for i, trig in enumerate(spec.get("triggers") or []):
                tw = f"{where}: trigger {trig.get('name') or i} ({trig.get('type')})"
                meta = trig.get("metadata") or {}
                kinds.add(trig.get("type"))
                if not c.check(trig.get("type") in KEDA_SCALERS, f"{tw}: not a scaler this check knows ({sorted(KEDA_SCALERS)})"):
                    continue
                required, optional = KEDA_SCALERS[trig["type"]]
                for k in sorted(required - set(meta)):
                    c.fail(f"{tw}: no metadata {k} (the scaler requires it)")
                for k in sorted(set(meta) - required - optional):
                    c.fail(f"{tw}: metadata {k} is not one the scaler documents")
                if trig["type"] == "nats-jetstream":
                    c.check(
                        (meta.get("stream"), meta.get("consumer")) in runs,
                        f"{tw}: {meta.get('stream')}/{meta.get('consumer')} is no durable consumer {s} runs "
                        f"({', '.join(sorted(f'{a}/{b}' for a, b in runs)) or 'none'})",
                    )
                    c.check(
                        meta.get("account") == account_of.get(s),
                        f"{tw}: account {meta.get('account')}, but NATS user {s} is in account {account_of.get(s)}",
                    )
                    for k in ("lagThreshold", "activationLagThreshold"):
                        if k in meta:
                            c.check(str(meta[k]).isdigit(), f"{tw}: {k}={meta[k]!r} is not a whole number")
                    host, _, port = str(meta.get("natsServerMonitoringEndpoint", "")).partition(":")
                    svc = k8s_find(docs, "Service", host.split(".")[0])
                    c.check(
                        svc is not None and host.split(".")[1:2] in ([], ["cim"])
                        and any(str(p.get("port")) == port for p in svc["spec"]["ports"])
                        and (svc["spec"].get("selector") or {}).get("app.kubernetes.io/name") == "nats",
                        f"{tw}: natsServerMonitoringEndpoint {meta.get('natsServerMonitoringEndpoint')} is no NATS "
                        "Service port in namespace cim",
                    )
                if trig["type"] == "postgresql":
                    c.check(
                        meta.get("connectionFromEnv") == STORE_VARS["postgres"][0]
                        and STORE_VARS["postgres"][0] in env_names,
                        f"{tw}: connectionFromEnv must be {STORE_VARS['postgres'][0]}, which the Deployment {s} gets "
                        "(its own role, its own schema)",
                    )
                    tables = re.findall(r"\bFROM\s+([a-z_]+)\.([a-z_]+)", meta.get("query", ""), re.I)
                    crate = service_crate(s)
                    migrations = "\n".join(f.read_text() for f in sorted((crate or ROOT).glob("migrations/*.sql")))
                    c.check(
                        bool(tables) and all(sch == s and re.search(rf"CREATE TABLE {tab}\b", migrations)
                                             for sch, tab in tables),
                        f"{tw}: the query reads {tables or 'no schema-qualified table'}, expected tables of schema {s} "
                        "that its migrations create",
                    )  # fmt: skip
                    for k in ("targetQueryValue", "activationTargetQueryValue"):
                        if k in meta:
                            c.check(str(meta[k]).isdigit(), f"{tw}: {k}={meta[k]!r} is not a whole number")
            # Every durable consumer the service runs wakes it: an event on a stream it does not
            # watch would wait until something else does.
            watched = {(t["metadata"].get("stream"), t["metadata"].get("consumer"))
                       for t in spec.get("triggers") or [] if t.get("type") == "nats-jetstream"}  # fmt: skip
            for st, n in sorted(runs - watched):
                c.fail(f"{where}: no nats-jetstream trigger for {st}/{n}, a durable consumer {s} runs")


# What the document service may do in MinIO: list its bucket, read, write and delete the objects
# in it (multipart uploads included). Nothing on other buckets, no bucket or admin operation.
MINIO_ALLOWED_ACTIONS = {
    "s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads", "s3:GetObject", "s3:PutObject",
    "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts",
}  # fmt: skip


def minio_setup(script: str) -> dict:
    """What a MinIO set-up script (compose's minio-init, the k8s Job minio-buckets) makes: the
    buckets, each user with the variable holding its secret key, and the policies it writes."""
    script = script.replace("$$", "$")
    users = {
        u: var for u, var in re.findall(r'mc admin user add \S+ ([a-z0-9-]+) "\$\{?(\w+)\}?"', script)
    }
    buckets = set(re.findall(r"mc mb (?:--\S+ )*\S+?/([a-z0-9.-]+)", script))
    policies = [json.loads(m) for m in re.findall(r"printf '%s' '(\{.*?\})'", script)]
    attached = dict(re.findall(r"mc admin policy attach \S+ (\S+) --user ([a-z0-9-]+)", script))
    return {"users": users, "buckets": buckets, "policies": policies, "attached": attached}


def check_minio_setup(c: Checker, setup: dict, where: str) -> None:
    """Every policy only lists and touches the objects of buckets the script creates."""
    c.check(bool(setup["policies"]) or not setup["users"], f"{where}: creates MinIO users but writes no policy")
    for pol in setup["policies"]:
        for st in pol.get("Statement", []):
            actions = st.get("Action", [])
            actions = [actions] if isinstance(actions, str) else actions
            resources = st.get("Resource", [])
            resources = [resources] if isinstance(resources, str) else resources
            for a in actions:
                c.check(
                    a in MINIO_ALLOWED_ACTIONS,
                    f"{where}: the MinIO policy allows {a} (only {', '.join(sorted(MINIO_ALLOWED_ACTIONS))})",
                )
            for r in resources:
                m = re.fullmatch(r"arn:aws:s3:::([a-z0-9.-]+)(/\*)?", r)
                c.check(
                    m is not None and m.group(1) in setup["buckets"],
                    f"{where}: the MinIO policy names {r}, not a bucket it creates ({sorted(setup['buckets'])})",
                )
            c.check(st.get("Effect") == "Allow", f"{where}: a MinIO policy statement that is not Allow")


def check_backup_command(c: Checker, args: list[str], setup: dict, where: str) -> None:
    """`cim backup --to s3://<bucket>/...` to a bucket the MinIO set-up creates, with retention."""
    c.check(args[:1] == ["backup"], f"{where}: runs {args}, expected the cim subcommand backup")
    to = args[args.index("--to") + 1] if "--to" in args[:-1] else ""
    m = re.fullmatch(r"s3://([a-z0-9.-]+)(/.*)?", to)
    if c.check(m is not None, f"{where}: --to {to or '(unset)'}, expected s3://<bucket>/<prefix>"):
        c.check(m.group(1) in setup["buckets"], f"{where}: bucket {m.group(1)} is not one MinIO's set-up creates")
    c.check("--keep" in args, f"{where}: no --keep (backups would accumulate forever)")


def check_backup(
    c: Checker, compose: dict, overlays: dict, compose_minio: dict, k8s_minio: dict, pg_init: str
) -> None:
    """The scheduled `cim backup`: compose's service (profile backup) and every overlay's CronJob
    run the same command, as the Postgres role and MinIO user made for it, to a bucket MinIO's
    set-up creates, reaching only Postgres and MinIO."""
    role_made = re.search(r"CREATE ROLE backup LOGIN", pg_init) is not None
    member = re.search(r'for service in \$SERVICES; do\s+psql_cim -v role="\$service" <<.SQL.\s+GRANT :"role" TO backup;', pg_init)
    c.check(
        role_made and member is not None,
        "docker/postgres/init/10-cim-roles.sh: no role backup that is a member of every domain service's role",
    )
    for where, setup in [("compose.yaml minio-init", compose_minio)] + [
        (f"k8s {o}: Job minio-buckets", m) for o, m in k8s_minio.items()
    ]:
        c.check(
            setup["users"].get(BACKUP) == "MINIO_PASSWORD_BACKUP" and BACKUP in setup["attached"].values(),
            f"{where}: no MinIO user {BACKUP} with its key from $MINIO_PASSWORD_BACKUP and a policy attached",
        )
    where = f"compose.yaml {BACKUP}"
    svc = compose["services"].get(BACKUP)
    if not c.check(svc is not None, f"{where}: no such service (in profile {BACKUP})"):
        return
    command = [str(a) for a in svc.get("command") or []]
    check_backup_command(c, command, compose_minio, where)
    c.check(svc.get("profiles") == [BACKUP], f"{where}: must be in profile {BACKUP} only (a one-shot `up` does not start)")
    env = svc.get("environment") or {}
    db = urlsplit(env.get("CIM_DATABASE_URL", ""))
    pg_env = compose["services"].get("postgres", {}).get("environment") or {}
    c.check(
        db.username == BACKUP and db.password == pg_env.get("PG_PASSWORD_BACKUP"),
        f"{where}: CIM_DATABASE_URL must name role {BACKUP} with postgres' PG_PASSWORD_BACKUP",
    )
    minio_env = compose["services"].get("minio-init", {}).get("environment") or {}
    check_s3_key(c, env, minio_env.get("MINIO_PASSWORD_BACKUP"), where)
    for var in STORE_VARS["nats"] + STORE_VARS["redis"] + STORE_VARS["jwt"]:
        c.check(not env.get(var), f"{where}: sets {var}, but a backup never uses it (an unused credential)")
    for overlay, docs in overlays.items():
        where = f"k8s {overlay}: CronJob cim-{BACKUP}"
        job = k8s_find(docs, "CronJob", f"cim-{BACKUP}")
        if not c.check(job is not None, f"{where}: missing"):
            continue
        c.check(job["spec"].get("concurrencyPolicy") == "Forbid", f"{where}: concurrencyPolicy must be Forbid")
        pod = pod_template(job)
        ctr = pod["spec"]["containers"][0]
        args = ctr.get("command", []) + ctr.get("args", [])
        c.check(image_base(ctr["image"]) == "cim", f"{where}: image {ctr['image']}, expected the monolith image cim")
        check_backup_command(c, args, k8s_minio.get(overlay, {"buckets": set()}), where)
        c.check(args == command, f"{where}: runs {args}, compose's {BACKUP} runs {command}")
        labels = pod["metadata"].get("labels", {})
        for store in STORES:
            used = store in ("postgres", "minio")
            c.check(
                (labels.get(f"cim/{store}-client") == "true") == used,
                f"{where}: {'needs' if used else 'must not carry'} label cim/{store}-client",
            )
        pol = k8s_find(docs, "NetworkPolicy", f"cim-{BACKUP}")
        egress = {
            to.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
            for rule in (pol or {}).get("spec", {}).get("egress", [])
            for to in rule.get("to", [])
        }
        c.check(egress - {None} == {"postgres", "minio"}, f"{where}: NetworkPolicy egress to {sorted(egress - {None})}")
        sc = ctr.get("securityContext", {})
        c.check(
            pod["spec"].get("securityContext", {}).get("runAsNonRoot") is True and sc.get("readOnlyRootFilesystem") is True,
            f"{where}: must run as non-root on a read-only root filesystem",
        )
        env = {}
        for src in ctr.get("envFrom", []):
            ref = src.get("configMapRef") or src.get("secretRef") or {}
            doc = k8s_find(docs, "ConfigMap" if "configMapRef" in src else "Secret", ref.get("name", ""))
            if doc is not None:
                env.update(secret_values(doc) if doc["kind"] == "Secret" else doc.get("data") or {})
        pg = k8s_find(docs, "Secret", "postgres-secrets")
        if "CIM_DATABASE_URL" in env and pg is not None:
            db = urlsplit(env["CIM_DATABASE_URL"])
            c.check(
                db.username == BACKUP and db.password == secret_values(pg).get("PG_PASSWORD_BACKUP"),
                f"{where}: CIM_DATABASE_URL must name role {BACKUP} with postgres-secrets' PG_PASSWORD_BACKUP",
            )
        minio = k8s_find(docs, "Secret", "minio-secrets")
        if "CIM_S3_ACCESS_KEY_ID" in env or overlay not in OPERATOR_SECRETS:
            check_s3_key(c, env, secret_values(minio).get("MINIO_PASSWORD_BACKUP") if minio else None, where)


def check_s3_key(c: Checker, env: dict, key: str | None, where: str) -> None:
    endpoint = urlsplit(env.get("CIM_S3_ENDPOINT", ""))
    c.check(
        endpoint.hostname == "minio" and endpoint.port == STORES["minio"],
        f"{where}: CIM_S3_ENDPOINT={env.get('CIM_S3_ENDPOINT')}, expected http://minio:{STORES['minio']}",
    )
    c.check(env.get("CIM_S3_ACCESS_KEY_ID") == BACKUP, f"{where}: CIM_S3_ACCESS_KEY_ID must be the MinIO user {BACKUP}")
    if key is not None:
        c.check(env.get("CIM_S3_SECRET_ACCESS_KEY") == key, f"{where}: CIM_S3_SECRET_ACCESS_KEY differs from MINIO_PASSWORD_BACKUP")


def design_networks(vars_: dict[str, str | None]) -> dict[str, set[str]]:
    """The networks each compose service needs: those its flows use, no more."""
    out: dict[str, set[str]] = {}
    for src, dst, _, net in design_flows(vars_):
        for host in (src, dst):
            if host != "outside":
                out.setdefault(host, set()).add(net)
    return out

# --- alerts reach a person: runbooks and Alertmanager ------------------------------------------

RUNBOOKS = "docs/runbooks"
ALERTMANAGER_CONFIG = "monitoring/alertmanager/alertmanager.yml"
# How a runbook cites what to look at, so the citations are checked against what exists (every
# quoted title, or backticked line name, up to the end of the clause: . ; or :):
#   dashboard "CIM overview", panel "Oldest unpublished event"      (Grafana panels)
#   dashboard "CIM overview", panels "Readiness" (which instances) and "Dependencies"
#   `cim doctor` line `nats`   /   `cim doctor` lines `stream` and `consumer`
RUNBOOK_PANEL = re.compile(r'[Dd]ashboard "([^"]+)", panels? ([^.;:]*)')
RUNBOOK_DOCTOR = re.compile(r"`cim doctor` lines? ([^.;:]*)")


def dashboard_panels() -> dict[str, set[str]]:
    """Dashboard title -> the titles of its panels (rows included)."""
    out: dict[str, set[str]] = {}
    for path in sorted((ROOT / "monitoring/grafana/dashboards").glob("*.json")):
        d = json.loads(path.read_text())
        titles = set()
        for p in d.get("panels", []):
            titles.add(p.get("title"))
            titles |= {q.get("title") for q in p.get("panels", [])}
        out[d["title"]] = titles
    return out


def doctor_lines() -> set[str]:
    """The names `cim doctor` prints its checks under (the first column after ok/FAIL/skip)."""
    text = (ROOT / "crates/cim/src/doctor.rs").read_text()
    return set(re.findall(r'\breport\.(?:line|fail|skip)\(\s*"([a-z]+)"', text))


def check_runbooks(c: Checker, alerts: dict[str, str]) -> None:
    """Each runbook is named after an alert of the rules, has the four parts, and what it tells
    the reader to look at exists: the Grafana panels and the `cim doctor` lines it cites."""
    panels = dashboard_panels()
    doctor = doctor_lines()
    c.check(bool(doctor), "crates/cim/src/doctor.rs: no report.line(\"<name>\", ...) found")
    for path in sorted((ROOT / RUNBOOKS).glob("*.md")):
        name, text = path.stem, path.read_text()
        flat = re.sub(r"\s+", " ", text)  # a citation may wrap
        if not c.check(name in alerts, f"{rel(path)}: no alert {name} in monitoring/prometheus/rules"):
            continue
        c.check(text.startswith(f"# {name}\n"), f"{rel(path)}: must start with the heading '# {name}'")
        for part in ("## What it means", "## Confirm", "## Fix", "## Verify"):
            c.check(f"\n{part}\n" in text, f"{rel(path)}: no section '{part}'")
        cites = 0
        for dash, titles in RUNBOOK_PANEL.findall(flat):
            for title in re.findall(r'"([^"]+)"', titles):
                cites += 1
                c.check(
                    title in panels.get(dash, set()),
                    f"{rel(path)}: cites panel \"{title}\" of dashboard \"{dash}\", which "
                    + ("has no such panel" if dash in panels else "does not exist"),
                )
        for names in RUNBOOK_DOCTOR.findall(flat):
            for line in re.findall(r"`([a-z]+)`", names):
                c.check(line in doctor, f"{rel(path)}: cites `cim doctor` line `{line}`, which doctor does not print")
        c.check(cites > 0, f"{rel(path)}: cites no Grafana panel (dashboard \"...\", panel \"...\")")


def matcher_alertnames(matchers: list[str]) -> list[str]:
    """The alert names an Alertmanager matcher list selects: alertname="X" or alertname=~"X|Y"."""
    out = []
    for m in matchers or []:
        hit = re.fullmatch(r'\s*alertname\s*(=~?)\s*"?([^"]*)"?\s*', m)
        if hit:
            out += hit.group(2).split("|") if hit.group(1) == "=~" else [hit.group(2)]
    return out


def check_alertmanager(c: Checker, alerts: dict[str, str], compose: dict, overlays: dict[str, list[dict]]) -> None:
    """Alertmanager names only alerts that exist; both Prometheus configs send to it; compose and
    every overlay run it with the repository's config, and only Prometheus reaches it."""
    cfg = yaml.safe_load((ROOT / ALERTMANAGER_CONFIG).read_text())
    named = []

    def walk(route: dict) -> None:
        named.extend(matcher_alertnames(route.get("matchers")))
        for r in route.get("routes") or []:
            walk(r)

    walk(cfg.get("route") or {})
    for rule in cfg.get("inhibit_rules") or []:
        sources = matcher_alertnames(rule.get("source_matchers"))
        c.check(bool(sources), f"{ALERTMANAGER_CONFIG}: an inhibit rule whose source is no alert by name")
        named += sources + matcher_alertnames(rule.get("target_matchers"))
    for name in named:
        c.check(name in alerts, f"{ALERTMANAGER_CONFIG}: names alert {name}, which no rule defines")
    target = f"{ALERTMANAGER}:{ALERTMANAGER_PORT}"
    for conf in ("monitoring/prometheus/prometheus.yml", "monitoring/prometheus/prometheus-k8s.yml"):
        prom = yaml.safe_load((ROOT / conf).read_text())
        targets = [t for am in (prom.get("alerting") or {}).get("alertmanagers", [])
                   for sc in am.get("static_configs", []) for t in sc.get("targets", [])]  # fmt: skip
        c.check(targets == [target], f"{conf}: alerting must send to {target} (sends to {targets})")
        c.check(
            "deployment" in (prom.get("global") or {}).get("external_labels", {}),
            f"{conf}: external_labels.deployment is what {ALERTMANAGER_CONFIG} groups and inhibits by",
        )
    am = compose["services"].get(ALERTMANAGER)
    if c.check(am is not None, f"compose.yaml: no service {ALERTMANAGER}"):
        mounts = {v.get("target"): v.get("source") for v in am.get("volumes", [])}
        c.check(
            mounts.get("/etc/alertmanager/alertmanager.yml") == str(ROOT / ALERTMANAGER_CONFIG),
            f"compose.yaml {ALERTMANAGER}: must mount {ALERTMANAGER_CONFIG} at /etc/alertmanager/alertmanager.yml",
        )
    for overlay, docs in overlays.items():
        dep, svc = k8s_find(docs, "Deployment", ALERTMANAGER), k8s_find(docs, "Service", ALERTMANAGER)
        if not c.check(dep is not None and svc is not None, f"k8s {overlay}: no Deployment and Service {ALERTMANAGER}"):
            continue
        c.check(
            [p["port"] for p in svc["spec"]["ports"]] == [ALERTMANAGER_PORT],
            f"k8s {overlay}: Service {ALERTMANAGER} must expose port {ALERTMANAGER_PORT}",
        )
        tpl = dep["spec"]["template"]
        vols = {v["name"]: (v.get("configMap") or {}).get("name") for v in tpl["spec"].get("volumes", [])}
        cm_names = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
        c.check(
            any(n and n.startswith("alertmanager-config") and n in cm_names for n in vols.values()),
            f"k8s {overlay}: Deployment {ALERTMANAGER} mounts no alertmanager-config ConfigMap",
        )
        names = {p["name"]: p["containerPort"] for ctr in tpl["spec"]["containers"]
                 for p in ctr.get("ports", []) if "name" in p}  # fmt: skip
        am_labels = tpl["metadata"].get("labels") or {}
        prom = k8s_find(docs, "Deployment", "prometheus")
        if prom is not None:
            prom_labels = prom["spec"]["template"]["metadata"].get("labels") or {}
            c.check(
                k8s_allows(docs, "Ingress", am_labels, prom_labels, ALERTMANAGER_PORT, names),
                f"k8s {overlay}: NetworkPolicy {ALERTMANAGER} does not admit Prometheus on {ALERTMANAGER_PORT}",
            )
        for s in SERVICES:
            d = k8s_find(docs, "Deployment", s)
            if d is not None:
                c.check(
                    not k8s_allows(docs, "Ingress", am_labels, d["spec"]["template"]["metadata"].get("labels") or {},
                                   ALERTMANAGER_PORT, names),
                    f"k8s {overlay}: NetworkPolicy {ALERTMANAGER} admits {s} (only Prometheus sends alerts)",
                )  # fmt: skip



# --- the checks ------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--compose-json", type=Path)
    ap.add_argument("--k8s", action="append", default=[], metavar="NAME=FILE")
    ap.add_argument(
        "--write-dashboard-rules",
        type=Path,
        metavar="FILE",
        help="only write every dashboard expression as a recording rule to FILE",
    )
    args = ap.parse_args()
    if args.write_dashboard_rules:
        write_dashboard_rules(args.write_dashboard_rules)
        return 0
    if not args.compose_json:
        ap.error("--compose-json is required")

    c = Checker()
    vars_ = code_vars()
    ports = code_ports(vars_)
    metrics, buckets, summaries = code_metrics()
    packages = cargo_packages()
    compose = json.loads(args.compose_json.read_text())
    overlays = {}
    for spec in args.k8s:
        name, _, file = spec.partition("=")
        overlays[name] = k8s_docs(Path(file))
    grace_ms = int(vars_.get("CIM_SHUTDOWN_GRACE_MS") or 0)

    # Services in the code: every CIM_<SERVICE>_ADDR. A crate building cim-<service> must be deployed.
    c.check(bool(ports), "no CIM_<SERVICE>_ADDR defaults found in config.rs")
    for s in SERVICES:
        c.check(s in ports, f"{s}: in SERVICES but config.rs has no CIM_{s.upper()}_ADDR/_ADMIN_ADDR defaults")
    bins = {b: pkg for pkg, info in packages.items() for b in info["bins"]}
    for s in ports:
        if s in UNDEPLOYED:
            c.notes.append(f"{s}: built, not deployed yet ({UNDEPLOYED[s]})")
        elif f"cim-{s}" in bins and s not in SERVICES:
            c.fail(
                f"{s}: crate {bins[f'cim-{s}']} builds cim-{s} but it is not deployed (add it to SERVICES in {rel(Path(__file__))})"
            )
    for s in SERVICES:
        if f"cim-{s}" not in bins:
            c.notes.append(f"{s}: no crate builds binary cim-{s} yet; its image builds once the crate lands")

    # --- every CIM_* variable set anywhere is one the code reads.
    secret_vars = code_secret_vars()

    def check_var(name: str, where: str) -> None:
        if name.startswith("CIM_"):
            known = name in vars_ or (name.endswith("_FILE") and name[: -len("_FILE")] in secret_vars)
            c.check(known, f"{where}: sets {name}, which is not in VARS (crates/cim-runtime/src/config.rs)")

    for svc, spec in compose["services"].items():
        for name in spec.get("environment") or {}:
            check_var(name, f"compose.yaml service {svc}")
    for path in sorted((ROOT / "docker").glob("*.Dockerfile")):
        for name in dockerfile(path)["env"]:
            check_var(name, rel(path))
    for overlay, docs in overlays.items():
        for d in docs:
            where = f"k8s {overlay}: {d['kind']} {d['metadata']['name']}"
            if d["kind"] == "ConfigMap":
                for name in d.get("data") or {}:
                    check_var(name, where)
            elif d["kind"] == "Secret":
                for name in secret_values(d):
                    check_var(name, where)
            elif d["kind"] in WORKLOADS:
                for ctr in pod_template(d)["spec"].get("containers", []):
                    for env in ctr.get("env", []):
                        check_var(env["name"], where)

    # --- per service: Dockerfile, compose, k8s, Prometheus, NATS user, Postgres role.
    accounts = (ROOT / "docker/nats/accounts.conf").read_text()
    pg_init = (ROOT / "docker/postgres/init/10-cim-roles.sh").read_text()
    m = re.search(r'^SERVICES="([^"]*)"', pg_init, re.M)
    pg_roles = set(m.group(1).split()) if m else set()
    compose_redis_cmd = [str(a) for a in (compose["services"].get("redis", {}).get("command") or [])]
    minio_init = compose["services"].get("minio-init", {})
    compose_minio = minio_setup(" ".join(str(a) for a in (minio_init.get("command") or [])))
    minio_init_env = minio_init.get("environment") or {}
    k8s_minio: dict[str, dict] = {}
    for overlay, docs in overlays.items():
        job = k8s_find(docs, "Job", "minio-buckets")
        if c.check(job is not None, f"k8s {overlay}: no Job minio-buckets (the bucket and the services' MinIO users)"):
            ctr = job["spec"]["template"]["spec"]["containers"][0]
            k8s_minio[overlay] = minio_setup(" ".join(ctr.get("command", []) + ctr.get("args", [])))
    production_secrets = production_secret_list((ROOT / "k8s/overlays/production/kustomization.yaml").read_text())
    prom_compose = yaml.safe_load((ROOT / "monitoring/prometheus/prometheus.yml").read_text())
    prom_k8s = yaml.safe_load((ROOT / "monitoring/prometheus/prometheus-k8s.yml").read_text())
    base_kustomization = yaml.safe_load((ROOT / "k8s/base/kustomization.yaml").read_text())
    nginx = (ROOT / "docker/nginx/nginx.conf").read_text()

    def job(cfg: dict, name: str) -> dict:
        return next((j for j in cfg["scrape_configs"] if j["job_name"] == name), {})

    compose_targets = {}
    for sc in job(prom_compose, "cim").get("static_configs", []):
        for t in sc["targets"]:
            compose_targets[sc.get("labels", {}).get("app")] = t
    k8s_targets = {}
    for sd in job(prom_k8s, "cim").get("dns_sd_configs", []):
        for n in sd["names"]:
            k8s_targets[n] = sd.get("port")

    for s in SERVICES:
        if s not in ports:
            continue
        port, admin = ports[s]
        image = f"cim-{s}"

        # Dockerfile
        path = ROOT / f"docker/{s}.Dockerfile"
        if c.check(path.exists(), f"{s}: no docker/{s}.Dockerfile"):
            df = dockerfile(path)
            c.check(
                df["expose"] == {port, admin},
                f"{rel(path)}: EXPOSE {sorted(df['expose'])}, code ports are {port} and {admin}",
            )
            c.check(f'"{s}:{admin}"' in df.get("healthcheck", ""), f"{rel(path)}: HEALTHCHECK must check {s}:{admin}")
            c.check(df.get("bin") == image, f"{rel(path)}: builds --bin {df.get('bin')}, expected {image}")
            c.check(df.get("title") == image, f"{rel(path)}: image title {df.get('title')}, expected {image}")
            c.check(
                f"/usr/local/bin/{image}" in df.get("entrypoint", ""), f"{rel(path)}: ENTRYPOINT does not run {image}"
            )
            if image in bins:
                c.check(
                    df.get("package") == bins[image],
                    f"{rel(path)}: -p {df.get('package')}, but {image} is in package {bins[image]}",
                )
            else:
                c.check(
                    df.get("package") == image,
                    f"{rel(path)}: -p {df.get('package')}, expected {image} (the crate is not there yet)",
                )

        # compose
        svc = compose["services"].get(s)
        if c.check(svc is not None, f"{s}: no service {s} in compose.yaml"):
            env = svc.get("environment") or {}
            c.check(
                image_base(svc.get("image", "")) == image,
                f"compose.yaml {s}: image {svc.get('image')}, expected {image}:<tag>",
            )
            c.check(
                Path(svc.get("build", {}).get("dockerfile", "")).name == f"{s}.Dockerfile",
                f"compose.yaml {s}: build.dockerfile should be docker/{s}.Dockerfile",
            )
            up = s.upper()
            for var, want in ((f"CIM_{up}_ADDR", port), (f"CIM_{up}_ADMIN_ADDR", admin)):
                if var in env:
                    c.check(
                        port_of(env[var]) == want, f"compose.yaml {s}: {var}={env[var]}, code default port is {want}"
                    )
            exposed = {int(p) for p in svc.get("expose", [])}
            c.check(
                exposed == {port, admin},
                f"compose.yaml {s}: expose {sorted(exposed)}, code ports are {port} and {admin}",
            )
            test = " ".join(svc.get("healthcheck", {}).get("test", []))
            c.check(f"{s}:{admin}" in test, f"compose.yaml {s}: healthcheck must check {s}:{admin}")
            c.check(
                duration_seconds(svc.get("stop_grace_period", "10s")) * 1000 > grace_ms,
                f"compose.yaml {s}: stop_grace_period must exceed CIM_SHUTDOWN_GRACE_MS ({grace_ms} ms)",
            )
            for dep in svc.get("depends_on", {}).values():
                c.check(
                    dep.get("condition") in ("service_healthy", "service_completed_successfully"),
                    f"compose.yaml {s}: depends_on without condition service_healthy",
                )
            # Credentials in the URLs match the ones the servers are given.
            db = urlsplit(env.get("CIM_DATABASE_URL", ""))
            if db.scheme:
                pg_env = compose["services"].get("postgres", {}).get("environment", {})
                c.check(
                    db.username == s, f"compose.yaml {s}: CIM_DATABASE_URL user {db.username}, expected the role {s}"
                )
                c.check(
                    db.password == pg_env.get(f"PG_PASSWORD_{up}"),
                    f"compose.yaml {s}: CIM_DATABASE_URL password differs from postgres PG_PASSWORD_{up}",
                )
            nats = urlsplit(env.get("CIM_NATS_URL", ""))
            if nats.scheme:
                nats_env = compose["services"].get("nats", {}).get("environment", {})
                c.check(nats.username == s, f"compose.yaml {s}: CIM_NATS_URL user {nats.username}, expected {s}")
                c.check(
                    nats.password == nats_env.get(f"NATS_PASSWORD_{up}"),
                    f"compose.yaml {s}: CIM_NATS_URL password differs from nats NATS_PASSWORD_{up}",
                )
            redis = urlsplit(env.get("CIM_REDIS_URL", ""))
            if redis.scheme and "redis" in service_uses(s):
                redis_env = compose["services"].get("redis", {}).get("environment", {})
                c.check(
                    redis.username == s,
                    f"compose.yaml {s}: CIM_REDIS_URL user {redis.username}, expected its own ACL user {s}",
                )
                c.check(
                    redis.password == redis_env.get(f"REDIS_PASSWORD_{up}"),
                    f"compose.yaml {s}: CIM_REDIS_URL password differs from redis REDIS_PASSWORD_{up}",
                )
            if "minio" in service_uses(s):
                check_s3_env(c, s, env, compose_minio, minio_init_env.get(f"MINIO_PASSWORD_{up}"), f"compose.yaml {s}")
            # What it must be given to start, and nothing for stores its code never uses.
            check_service_env(c, s, env, vars_, f"compose.yaml {s}")

        # Prometheus, NATS, Postgres
        c.check(
            compose_targets.get(s) == f"{s}:{admin}",
            f"monitoring/prometheus/prometheus.yml: job cim needs target {s}:{admin} with label app: {s}",
        )
        c.check(
            k8s_targets.get(f"{s}-pods") == admin,
            f"monitoring/prometheus/prometheus-k8s.yml: job cim needs dns_sd name {s}-pods, port {admin}",
        )
        # A login on each store the service uses, and none on the others (no unused credentials).
        uses = service_uses(s)
        need = {store: store in uses for store in ("postgres", "nats", "redis", "minio")}
        has = {
            "nats": re.search(rf"\buser:\s*{s}\b", accounts) is not None,
            "postgres": s in pg_roles,
            "redis": re.search(rf"--user\s+{s}\b", " ".join(compose_redis_cmd)) is not None,
            "minio": s in compose_minio["users"],
        }
        where_login = {
            "nats": "docker/nats/accounts.conf: user",
            "postgres": "docker/postgres/init/10-cim-roles.sh: SERVICES",
            "redis": "compose.yaml redis: --user",
            "minio": "compose.yaml minio-init: mc admin user add",
        }
        for store in need:
            if need[store]:
                c.check(has[store], f"{where_login[store]} {s} missing ({s} uses {store})")
            else:
                c.check(not has[store], f"{where_login[store]} {s} exists, but {s} never uses {store}")
        for store, server, var in (
            ("postgres", "postgres", f"PG_PASSWORD_{s.upper()}"),
            ("nats", "nats", f"NATS_PASSWORD_{s.upper()}"),
            ("redis", "redis", f"REDIS_PASSWORD_{s.upper()}"),
            ("minio", "minio-init", f"MINIO_PASSWORD_{s.upper()}"),
        ):
            present = var in (compose["services"].get(server, {}).get("environment") or {})
            if need[store]:
                c.check(present, f"compose.yaml {server}: no {var}")
            else:
                c.check(not present, f"compose.yaml {server}: {var} is given, but {s} never uses {store}")
        for overlay, docs in overlays.items():
            red = k8s_find(docs, "StatefulSet", "redis")
            if red is not None:
                cmd = " ".join(red["spec"]["template"]["spec"]["containers"][0].get("command", []))
                present = re.search(rf"--user\s+{s}\b", cmd) is not None
                c.check(
                    present == need["redis"],
                    f"k8s {overlay}: StatefulSet redis {'lacks' if need['redis'] else 'has'} an ACL user {s}",
                )
        # MinIO: its own user, whose secret key is the one the set-up gives it, a policy attached,
        # and the bucket it is configured with is one the set-up creates.
        if need["minio"]:
            var = f"MINIO_PASSWORD_{s.upper()}"
            c.check(
                compose_minio["users"].get(s) == var,
                f"compose.yaml minio-init: user {s} must get its secret key from ${var}",
            )
            c.check(s in compose_minio["attached"].values(), f"compose.yaml minio-init: no policy attached to user {s}")
            for overlay, setup in k8s_minio.items():
                c.check(
                    setup["users"].get(s) == var,
                    f"k8s {overlay}: Job minio-buckets must add MinIO user {s} with its key from ${var}",
                )
                c.check(
                    s in setup["attached"].values(), f"k8s {overlay}: Job minio-buckets attaches no policy to user {s}"
                )
        else:
            c.check(not any(s in m["users"] for m in [compose_minio, *k8s_minio.values()]),
                    f"a MinIO user {s} exists, but {s} never uses the object store")  # fmt: skip

        # k8s base folder
        folder = ROOT / f"k8s/base/{s}"
        c.check(folder.is_dir(), f"{s}: no k8s/base/{s}/")
        c.check(s in base_kustomization.get("resources", []), f"k8s/base/kustomization.yaml: {s} not in resources")
        for overlay in ("dev", "production"):
            k = yaml.safe_load((ROOT / f"k8s/overlays/{overlay}/kustomization.yaml").read_text())
            c.check(
                any(i.get("name") == image for i in k.get("images", [])),
                f"k8s/overlays/{overlay}: no images entry for {image}",
            )
            c.check(
                any(r.get("name") == s for r in k.get("replicas", [])),
                f"k8s/overlays/{overlay}: no replicas entry for {s}",
            )

        # k8s rendered overlays
        for overlay, docs in overlays.items():
            where = f"k8s {overlay}"
            dep = k8s_find(docs, "Deployment", s)
            if not c.check(dep is not None, f"{where}: no Deployment {s}"):
                continue
            pod = dep["spec"]["template"]
            spec = pod["spec"]
            ctr = spec["containers"][0]
            c.check(
                image_base(ctr["image"]) == image, f"{where}: Deployment {s} image {ctr['image']}, expected {image}"
            )
            named = {p.get("name"): p["containerPort"] for p in ctr.get("ports", [])}
            c.check(
                set(named.values()) == {port, admin},
                f"{where}: Deployment {s} container ports {sorted(named.values())}, code ports are {port} and {admin}",
            )
            c.check(named.get("admin") == admin, f"{where}: Deployment {s} has no port named admin = {admin}")
            ann = pod["metadata"].get("annotations", {})
            c.check(
                ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == str(admin),
                f'{where}: Deployment {s} needs prometheus.io/scrape "true" and prometheus.io/port "{admin}"',
            )
            for probe, path in (("livenessProbe", "/health/live"), ("readinessProbe", "/health/ready")):
                get = ctr.get(probe, {}).get("httpGet", {})
                p = named.get(get.get("port"), get.get("port"))
                c.check(
                    get.get("path") == path and p == admin,
                    f"{where}: Deployment {s} {probe} must GET {path} on the admin port",
                )
            sc = ctr.get("securityContext", {})
            psc = spec.get("securityContext", {})
            c.check(
                psc.get("runAsNonRoot") is True or sc.get("runAsNonRoot") is True,
                f"{where}: Deployment {s} must set runAsNonRoot",
            )
            c.check(
                sc.get("readOnlyRootFilesystem") is True, f"{where}: Deployment {s} must set readOnlyRootFilesystem"
            )
            c.check(
                sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: Deployment {s} must drop ALL capabilities"
            )
            c.check(
                sc.get("allowPrivilegeEscalation") is False, f"{where}: Deployment {s} must forbid privilege escalation"
            )
            c.check("requests" in ctr.get("resources", {}), f"{where}: Deployment {s} has no resource requests")
            sleep = 0
            pre = ctr.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            if len(pre) == 2 and pre[0] == "sleep":
                sleep = int(pre[1])
            c.check(
                spec.get("terminationGracePeriodSeconds", 30) * 1000 > grace_ms + sleep * 1000,
                f"{where}: Deployment {s} terminationGracePeriodSeconds must exceed preStop + CIM_SHUTDOWN_GRACE_MS",
            )
            # Its ConfigMaps and Secrets exist and carry the right ports.
            env: dict[str, str] = {}
            for src in ctr.get("envFrom", []):
                if "configMapRef" in src:
                    cm = k8s_index(docs).get(("ConfigMap", src["configMapRef"]["name"]))
                    if c.check(
                        cm is not None, f"{where}: Deployment {s} uses missing ConfigMap {src['configMapRef']['name']}"
                    ):
                        env.update(cm.get("data") or {})
                elif "secretRef" in src:
                    sec = k8s_index(docs).get(("Secret", src["secretRef"]["name"]))
                    if sec is not None:
                        env.update(secret_values(sec))
                    elif overlay not in OPERATOR_SECRETS:
                        c.fail(f"{where}: Deployment {s} uses missing Secret {src['secretRef']['name']}")
            for e in ctr.get("env", []):
                env[e["name"]] = e.get("value") or "<from the Secret>"
            up = s.upper()
            for var, want in ((f"CIM_{up}_ADDR", port), (f"CIM_{up}_ADMIN_ADDR", admin)):
                c.check(var in env, f"{where}: {s} ConfigMap does not set {var}")
                if var in env:
                    c.check(port_of(env[var]) == want, f"{where}: {s} {var}={env[var]}, code default port is {want}")
            for var, server, key in (
                ("CIM_DATABASE_URL", "postgres-secrets", f"PG_PASSWORD_{up}"),
                ("CIM_NATS_URL", "nats-secrets", f"NATS_PASSWORD_{up}"),
                ("CIM_REDIS_URL", "redis-secrets", f"REDIS_PASSWORD_{up}"),
            ):
                u = urlsplit(env.get(var, ""))
                srv = k8s_find(docs, "Secret", server)
                if u.scheme and srv is not None:
                    c.check(
                        u.username == s and u.password == secret_values(srv).get(key),
                        f"{where}: {s} {var} user/password differ from {server} {key}",
                    )
            if "minio" in uses and overlay in k8s_minio:
                srv = k8s_find(docs, "Secret", "minio-secrets")
                want_key = secret_values(srv).get(f"MINIO_PASSWORD_{up}") if srv is not None else None
                if srv is not None or overlay not in OPERATOR_SECRETS:
                    check_s3_env(c, s, env, k8s_minio[overlay], want_key, f"{where}: Deployment {s}")
            # What it must be given to start, and nothing for stores it never uses. Production's
            # Secrets are not rendered: their keys are the ones its kustomization lists.
            for src in ctr.get("envFrom", []):
                name = src.get("secretRef", {}).get("name")
                if name and k8s_index(docs).get(("Secret", name)) is None and overlay in OPERATOR_SECRETS:
                    for key in production_secrets.get(name, []):
                        env.setdefault(key, "<from the Secret>")
            check_service_env(c, s, env, vars_, f"{where}: Deployment {s}")
            # Stores admit it by label, and its NetworkPolicy lets it out: only to what it uses.
            labels = pod["metadata"].get("labels", {})
            pol = k8s_find(docs, "NetworkPolicy", s)
            egress = set()
            for rule in (pol or {}).get("spec", {}).get("egress", []):
                for to in rule.get("to", []):
                    egress.add(to.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name"))
            for store in STORES:
                used = store in uses
                c.check(
                    (labels.get(f"cim/{store}-client") == "true") == used,
                    f"{where}: Deployment {s} {'needs' if used else 'must not carry'} label cim/{store}-client"
                    f"{'' if used else f' ({s} never uses {store})'}",
                )
                if pol is not None:
                    c.check(
                        (store in egress) == used,
                        f"{where}: NetworkPolicy {s} {'lacks' if used else 'allows'} egress to {store}"
                        f"{'' if used else f' ({s} never uses it)'}",
                    )
            # Services: the main one's ports resolve to the code ports; <s>-pods exposes admin.
            svc_doc = k8s_find(docs, "Service", s)
            if c.check(svc_doc is not None, f"{where}: no Service {s}"):
                targets = {named.get(p.get("targetPort"), p.get("targetPort")) for p in svc_doc["spec"]["ports"]}
                c.check(
                    targets == {port, admin},
                    f"{where}: Service {s} targets {sorted(map(str, targets))}, code ports are {port} and {admin}",
                )
            pods = k8s_find(docs, "Service", f"{s}-pods")
            if c.check(pods is not None, f"{where}: no headless Service {s}-pods (Prometheus discovery)"):
                c.check(pods["spec"].get("clusterIP") == "None", f"{where}: Service {s}-pods must be headless")
                c.check(
                    [p["port"] for p in pods["spec"]["ports"]] == [admin],
                    f"{where}: Service {s}-pods must expose only port {admin}",
                )
            for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceAccount", "NetworkPolicy"):
                # KEDA's ScaledObject makes (and owns) the HPA of a Deployment it scales.
                found = k8s_find(docs, kind, s) or (kind == "HorizontalPodAutoscaler" and k8s_find(docs, "ScaledObject", s))
                c.check(found is not None, f"{where}: no {kind} {s}")
            c.check(spec.get("serviceAccountName") == s, f"{where}: Deployment {s} must run as ServiceAccount {s}")

    # --- calls between services: every CIM_<SERVICE>_<CALLEE>_URLS names a deployed service, and
    # in each overlay the NetworkPolicies let exactly those calls through (the caller's egress and
    # the callee's ingress on its gRPC port), nothing else between two services.
    for name in vars_:
        called = re.fullmatch(r"CIM_[A-Z]+_([A-Z]+)_URLS", name)
        if called and called.group(1).lower() not in UNDEPLOYED:
            c.check(
                any(var == name for _, _, var in service_urls(vars_)),
                f"config.rs: {name} names no deployed service (CIM_<SERVICE>_<CALLEE or SELF>_URLS, both in SERVICES)",
            )
    calls = {(src, dst): var for src, dst, var in service_urls(vars_)}
    for overlay, docs in overlays.items():
        pods = {}
        for s in SERVICES:
            dep = k8s_find(docs, "Deployment", s)
            if dep is not None:
                tpl = dep["spec"]["template"]
                names = {p["name"]: p["containerPort"] for ctr in tpl["spec"]["containers"]
                         for p in ctr.get("ports", []) if "name" in p}  # fmt: skip
                pods[s] = (tpl["metadata"].get("labels") or {}, names)
        for src, (src_labels, _) in pods.items():
            for dst, (dst_labels, dst_names) in pods.items():
                if dst not in ports:
                    continue
                port = ports[dst][0]
                out = k8s_allows(docs, "Egress", src_labels, dst_labels, port, dst_names)
                into = k8s_allows(docs, "Ingress", dst_labels, src_labels, port, dst_names)
                want = (src, dst) in calls
                why = f" ({calls[(src, dst)]})" if want else " (no CIM_*_URLS of the caller names it)"
                c.check(
                    out == want,
                    f"k8s {overlay}: NetworkPolicy {src} {'lacks' if want else 'allows'} egress to {dst}:{port}{why}",
                )
                c.check(
                    into == want,
                    f"k8s {overlay}: NetworkPolicy {dst} {'lacks' if want else 'allows'} ingress from {src} on "
                    f"{port}{why}",
                )

    # --- deployment hygiene (issue 14): secrets, published ports, networks, NATS, Secret lists.
    compose_text = (ROOT / "compose.yaml").read_text()
    for name, op in sorted(set(compose_interpolations(compose_text))):
        if SECRETISH.search(name):
            c.check(
                op == ":?",
                f"compose.yaml: ${{{name}{op}...}} must be ${{{name}:?...}}: a secret never falls back to a default "
                "(a forgotten .env would run with a public value)",
            )
    for svc, spec in compose["services"].items():
        for p in spec.get("ports") or []:
            ip = p.get("host_ip") or "0.0.0.0"
            c.check(
                svc == LOAD_BALANCER or ip in ("127.0.0.1", "::1"),
                f"compose.yaml {svc}: publishes {p.get('published')} on {ip}; only the load balancer is public "
                "(bind it to 127.0.0.1)",
            )
    graf = compose["services"].get("grafana", {}).get("environment") or {}
    c.check(
        re.search(r"GF_SECURITY_ADMIN_PASSWORD:\s*\$\{[A-Z_]+:\?", compose_text) is not None
        and graf.get("GF_SECURITY_ADMIN_PASSWORD") not in (None, "", "admin"),
        "compose.yaml grafana: GF_SECURITY_ADMIN_PASSWORD must come from a required variable (${GRAFANA_ADMIN_PASSWORD:?})",
    )
    want_nets = design_networks(vars_)
    for svc, spec in compose["services"].items():
        have = set((spec.get("networks") or {}).keys())
        if not c.check(svc in want_nets, f"compose.yaml {svc}: not in the design's flows (design_flows in {rel(Path(__file__))})"):
            continue
        c.check(
            have == want_nets[svc],
            f"compose.yaml {svc}: networks {sorted(have)}, its flows need {sorted(want_nets[svc])}",
        )
    check_nats_permissions(c, accounts)
    check_gateway_cache_permissions(c, accounts)
    check_workflow_listener_permissions(c, accounts)
    check_webhook_intake_permissions(c, accounts)
    check_agent_conversation_permissions(c, accounts)
    check_outbound_policies(c, overlays)
    check_scaled_objects(c, overlays, accounts)
    check_minio_setup(c, compose_minio, "compose.yaml minio-init")
    check_backup(c, compose, overlays, compose_minio, k8s_minio, pg_init)
    for overlay, setup in k8s_minio.items():
        check_minio_setup(c, setup, f"k8s {overlay}: Job minio-buckets")
        c.check(
            setup["policies"] == compose_minio["policies"] and setup["buckets"] == compose_minio["buckets"],
            f"k8s {overlay}: Job minio-buckets makes other buckets or policies than compose's minio-init",
        )
    # Production: every Secret a workload references exists in the list its kustomization gives
    # operators, with the keys the dev overlay generates for it (and the Ingress certificate).
    listed = production_secrets
    prod = overlays.get("production")
    dev = overlays.get("dev")
    if prod is not None:
        refs: dict[str, set[str]] = {}
        for d in prod:
            if d["kind"] == "Ingress":
                for t in d["spec"].get("tls", []):
                    refs.setdefault(t["secretName"], set()).update({"tls.crt", "tls.key"})
            if d["kind"] not in WORKLOADS:
                continue
            pod = pod_template(d)["spec"]
            for ctr in pod.get("containers", []) + pod.get("initContainers", []):
                for src in ctr.get("envFrom", []):
                    if "secretRef" in src:
                        refs.setdefault(src["secretRef"]["name"], set())
                for e in ctr.get("env", []):
                    ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                    if ref:
                        refs.setdefault(ref["name"], set()).add(ref["key"])
            for v in pod.get("volumes", []):
                if "secret" in v:
                    refs.setdefault(v["secret"]["secretName"], set())
        generated = {d["metadata"]["name"] for d in prod if d["kind"] == "Secret"}
        for name, keys in sorted(refs.items()):
            if name in generated:
                continue
            if not c.check(
                name in listed,
                f"k8s/overlays/production/kustomization.yaml: Secret {name} is referenced but not in the list of Secrets to create",
            ):
                continue
            for k in sorted(keys - set(listed[name])):
                c.fail(f"k8s/overlays/production/kustomization.yaml: Secret {name} needs key {k}, not listed")
            if dev is not None:
                dsec = k8s_find(dev, "Secret", name)
                if dsec is not None:
                    c.check(
                        set(secret_values(dsec)) == set(listed[name]),
                        f"k8s: Secret {name} has keys {sorted(secret_values(dsec))} in dev but "
                        f"{sorted(listed[name])} in production's list",
                    )
        for name in sorted(set(listed) - set(refs)):
            c.fail(f"k8s/overlays/production/kustomization.yaml: lists Secret {name}, which nothing references")

    # nginx upstreams and Ingress backends point at the right ports.
    for host, p in re.findall(r"^\s*server\s+([a-z0-9-]+):(\d+)", nginx, re.M):
        if host in ports:
            c.check(
                int(p) == ports[host][0], f"docker/nginx/nginx.conf: upstream {host}:{p}, code port is {ports[host][0]}"
            )
    for overlay, docs in overlays.items():
        for ing in (d for d in docs if d["kind"] == "Ingress"):
            for rule in ing["spec"].get("rules", []):
                for path in rule["http"]["paths"]:
                    backend = path["backend"]["service"]
                    svc_doc = k8s_find(docs, "Service", backend["name"])
                    if not c.check(
                        svc_doc is not None,
                        f"k8s {overlay}: Ingress {ing['metadata']['name']} routes to missing Service {backend['name']}",
                    ):
                        continue
                    want = backend["port"].get("name") or backend["port"].get("number")
                    ok = any(p.get("name") == want or p.get("port") == want for p in svc_doc["spec"]["ports"])
                    c.check(
                        ok,
                        f"k8s {overlay}: Ingress {ing['metadata']['name']} uses port {want} that Service {backend['name']} lacks",
                    )

    # The monolith image exposes and checks every deployed service.
    df = dockerfile(ROOT / "docker/cim.Dockerfile")
    want_ports = {p for s in SERVICES if s in ports for p in ports[s]}
    c.check(
        df["expose"] == want_ports,
        f"docker/cim.Dockerfile: EXPOSE {sorted(df['expose'])}, expected {sorted(want_ports)}",
    )
    for s in SERVICES:
        if s in ports:
            c.check(
                f'"{s}:{ports[s][1]}"' in df.get("healthcheck", ""),
                f"docker/cim.Dockerfile: HEALTHCHECK must list {s}:{ports[s][1]}",
            )
    c.check(df.get("package") == "cim" and df.get("bin") == "cim", "docker/cim.Dockerfile: must build -p cim --bin cim")

    # Third-party images: the same versions in compose and Kubernetes.
    compose_images = {
        image_base(v["image"]): image_tag(v["image"]) for v in compose["services"].values() if "image" in v
    }
    for overlay, docs in overlays.items():
        for d in docs:
            if d["kind"] not in WORKLOADS:
                continue
            for ctr in pod_template(d)["spec"]["containers"]:
                base, tag = image_base(ctr["image"]), image_tag(ctr["image"])
                # CIM's own images are tagged by each overlay.
                if base == "cim" or base.startswith("cim-") or base not in compose_images:
                    continue
                c.check(
                    tag == compose_images[base],
                    f"k8s {overlay}: {d['kind']} {d['metadata']['name']} runs {base}:{tag}, compose runs {base}:{compose_images[base]}",
                )

    # --- metrics in dashboards, rules and rule tests are ones the code exports.
    def check_expr(expr: str, where: str) -> None:
        for name in promql_metrics(expr):
            c.check(
                metric_known(name, metrics, buckets, summaries),
                f"{where}: metric {name} is not exported by the code (crates/*/src) nor made by Prometheus",
            )

    dash_dir = ROOT / "monitoring/grafana/dashboards"
    dashboards = sorted(dash_dir.glob("*.json"))
    c.check(bool(dashboards), "monitoring/grafana/dashboards: no dashboards")
    uids = {}
    ds_uids = set()
    for f in (ROOT / "monitoring/grafana/provisioning/datasources").glob("*.yaml"):
        ds_uids |= {d["uid"] for d in yaml.safe_load(f.read_text()).get("datasources", [])}
    for path in dashboards:
        d = json.loads(path.read_text())
        c.check(d.get("uid") not in uids, f"{rel(path)}: uid {d.get('uid')} also used by {uids.get(d.get('uid'))}")
        uids[d.get("uid")] = rel(path)
        panels = []
        for p in d.get("panels", []):
            panels.append(p)
            panels.extend(p.get("panels", []))
        ids = [p.get("id") for p in panels]
        c.check(len(ids) == len(set(ids)), f"{rel(path)}: panel ids are not unique")
        for p in panels:
            for t in p.get("targets", []):
                if "expr" in t:
                    check_expr(t["expr"], f"{rel(path)} panel '{p.get('title')}'")
            for obj in [p] + p.get("targets", []):
                uid = (obj.get("datasource") or {}).get("uid")
                if uid and not uid.startswith("$") and not uid.startswith("--"):
                    c.check(
                        uid in ds_uids, f"{rel(path)} panel '{p.get('title')}': datasource uid {uid} is not provisioned"
                    )
        for v in d.get("templating", {}).get("list", []):
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            if v.get("type") == "query" and q:
                check_expr(q, f"{rel(path)} variable {v.get('name')}")

    rules_dir = ROOT / "monitoring/prometheus/rules"
    alerts: dict[str, str] = {}
    for path in sorted(rules_dir.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                check_expr(rule["expr"], f"{rel(path)} {rule.get('alert') or rule.get('record')}")
                if "alert" in rule:
                    alerts[rule["alert"]] = rel(path)
                    # Every alert has its runbook: a file of this repository, by its path from the root.
                    runbook = (rule.get("annotations") or {}).get("runbook_url")
                    want = f"{RUNBOOKS}/{rule['alert']}.md"
                    c.check(
                        runbook == want and (ROOT / want).is_file(),
                        f"{rel(path)} {rule['alert']}: annotations.runbook_url must be {want!r}, an existing file "
                        f"(is {runbook!r})",
                    )
    check_runbooks(c, alerts)
    check_alertmanager(c, alerts, compose, overlays)
    for path in sorted((ROOT / "monitoring/prometheus/tests").glob("*.yml")):
        for test in yaml.safe_load(path.read_text())["tests"]:
            for series in test.get("input_series", []):
                check_expr(series["series"], f"{rel(path)} test '{test.get('name')}' input")

    # Every dashboard and rules file is also in the Kubernetes ConfigMaps.
    mon = yaml.safe_load((ROOT / "monitoring/kustomization.yaml").read_text())
    gen = {g["name"]: [f.split("=", 1)[-1] for f in g.get("files", [])] for g in mon.get("configMapGenerator", [])}
    for path in dashboards:
        c.check(
            str(path.relative_to(ROOT / "monitoring")) in gen.get("grafana-dashboards", []),
            f"monitoring/kustomization.yaml: grafana-dashboards does not list {path.name}",
        )
    for path in sorted(rules_dir.glob("*.yml")):
        c.check(
            str(path.relative_to(ROOT / "monitoring")) in gen.get("prometheus-rules", []),
            f"monitoring/kustomization.yaml: prometheus-rules does not list {path.name}",
        )

    # --- the infrastructure's exporters and the production overlay's logs.
    import consistency_infra  # here: it imports this module's helpers

    consistency_infra.check(c, compose, overlays)

    # --- the production overlay's links to the stores: TLS, every one.
    import consistency_tls

    consistency_tls.check(c, overlays)

    # --- report
    for note in c.notes:
        print(f"note: {note}")
    for failure in c.failures:
        print(f"FAIL: {failure}")
    print(
        f"checked {len(SERVICES)} services against {len(vars_)} CIM_* variables and {len(metrics)} metric names in the code"
    )
    print(f"consistency: {c.checks - len(c.failures)} passed, {len(c.failures)} failed")
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(main())
