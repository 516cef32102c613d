#!/usr/bin/env python3
"""consistency.py's check that in the production overlay (and the serverless one built on it)
every link to a store is TLS, so a later edit cannot silently drop it:

- clients: every container of a workload a store admits (label cim/<store>-client) reaches it over
  TLS, checked against a CA file on a mounted Secret: Postgres URLs with sslmode=verify-full and
  sslrootcert, Redis URLs rediss:// with CIM_REDIS_CA_FILE (and the client certificate Redis
  asks for), NATS with CIM_NATS_CA_FILE and a client certificate; the exporters' own settings
  likewise. URLs held in operator-made Secrets are the shapes the overlay's header documents.
- servers: Postgres with ssl=on, its certificate mounted and an hba_file that takes nothing but
  TLS over the network; Redis with its plain port off and TLS on the store port (client
  certificates required, probes over TLS); NATS with a tls block (verify: true) on the client
  port and on the cluster routes, its config otherwise the base's (k8s/base/nats/nats.conf).

Each failure names the workload and the variable or setting. Called by consistency.main();
`consistency_tls.py --self-test RENDERED-PRODUCTION.yaml` makes each drift on purpose and fails
unless every one is caught (scripts/check-deploy.sh runs both).
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import consistency as C  # noqa: E402

TLS_OVERLAYS = ("production", "serverless")
PRODUCTION = "k8s/overlays/production/kustomization.yaml"
# The client-side variables of each store: URL, CA, certificate, key (None: not asked for).
CIM_CLIENT = {
    "postgres": ("CIM_DATABASE_URL", None, None, None),
    "redis": ("CIM_REDIS_URL", "CIM_REDIS_CA_FILE", "CIM_REDIS_CERT_FILE", "CIM_REDIS_KEY_FILE"),
    "nats": ("CIM_NATS_URL", "CIM_NATS_CA_FILE", "CIM_NATS_CERT_FILE", "CIM_NATS_KEY_FILE"),
}
# The exporters' own: postgres-exporter (lib/pq DSN), redis_exporter.
EXPORTER_CLIENT = {
    "postgres": ("DATA_SOURCE_URI", None, None, None),
    "redis": ("REDIS_ADDR", "REDIS_EXPORTER_TLS_CA_CERT_FILE", "REDIS_EXPORTER_TLS_CLIENT_CERT_FILE",
              "REDIS_EXPORTER_TLS_CLIENT_KEY_FILE"),
}  # fmt: skip
SECRET_VALUE = "<from the Secret>"
# The production overlay's nats.conf is this one plus its tls blocks.
BASE_NATS = "k8s/base/nats/nats.conf"


def check(c: C.Checker, overlays: dict[str, list[dict]]) -> None:
    header = (C.ROOT / PRODUCTION).read_text()
    for overlay in TLS_OVERLAYS:
        if overlay in overlays:
            check_overlay(c, overlay, overlays[overlay], header)


def documented_urls(header: str) -> dict[str, str]:
    """The store URL shapes the production overlay's header gives for its operator-made Secrets
    (`#   CIM_DATABASE_URL: postgres://...`)."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^#\s+(CIM_[A-Z_]+_URL):\s+(\S+)", header, re.M)}


def secret_mounts(pod: dict, ctr: dict) -> dict[str, str]:
    """mountPath -> Secret name of each Secret volume the container mounts."""
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    return {m["mountPath"]: secrets[m["name"]] for m in ctr.get("volumeMounts", []) if m["name"] in secrets}


def on_secret(path: str | None, mounts: dict[str, str]) -> str | None:
    """The Secret a file path lies on (None: no mounted Secret holds it)."""
    if not path:
        return None
    return next((s for mp, s in mounts.items() if path.startswith(mp.rstrip("/") + "/")), None)


def container_env(docs: list[dict], ctr: dict, listed: dict[str, list[str]]) -> dict[str, str]:
    """What the container is given: its ConfigMaps, rendered Secrets, the keys the header lists
    for Secrets the operator makes, then its own env (literal values, else SECRET_VALUE)."""
    env: dict[str, str] = {}
    for src in ctr.get("envFrom", []):
        if "configMapRef" in src:
            cm = C.k8s_find(docs, "ConfigMap", src["configMapRef"]["name"])
            env.update((cm or {}).get("data") or {})
        elif "secretRef" in src:
            sec = C.k8s_find(docs, "Secret", src["secretRef"]["name"])
            if sec is not None:
                env.update(C.secret_values(sec))
            else:
                env.update({k: SECRET_VALUE for k in listed.get(src["secretRef"]["name"], [])})
    for e in ctr.get("env", []):
        env[e["name"]] = e["value"] if "value" in e else SECRET_VALUE
    return env


def shown(url: str) -> str:
    """A URL for a message: the password (a rendered Secret's) left out."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


def check_url(c: C.Checker, store: str, var: str, url: str, mounts: dict[str, str], where: str) -> None:
    url_shown = shown(url)
    if store == "postgres":
        # A libpq-style DSN (postgres-exporter's DATA_SOURCE_URI has no scheme) or a URL.
        query = parse_qs(url.split("?", 1)[1]) if "?" in url else {}
        c.check(
            query.get("sslmode") == ["verify-full"],
            f"{where}: {var}={url_shown} has sslmode {query.get('sslmode', ['(unset)'])[0]}, expected verify-full",
        )
        root = query.get("sslrootcert", [None])[0]
        c.check(
            on_secret(root, mounts) is not None,
            f"{where}: {var}={url_shown}: sslrootcert {root or '(unset)'} is not a file of a mounted Secret",
        )
    elif store == "redis":
        c.check(urlsplit(url).scheme == "rediss", f"{where}: {var}={url_shown}, expected a rediss:// URL (TLS)")


def check_client(c: C.Checker, store: str, vars_: tuple, env: dict[str, str], mounts: dict[str, str],
                 documented: dict[str, str], where: str) -> None:  # fmt: skip
    url_var, ca, cert, key = vars_
    url = env.get(url_var)
    if not c.check(url is not None, f"{where}: reaches {store} (label cim/{store}-client) but sets no {url_var}"):
        return
    if url == SECRET_VALUE:
        # In a Secret the operator makes: the shape the header tells them to write.
        url = documented.get(url_var)
        if not c.check(url is not None, f"{where}: {url_var} comes from a Secret, but {PRODUCTION} documents no "
                                        f"'#   {url_var}: <URL>' shape for it"):  # fmt: skip
            return
    check_url(c, store, url_var, url, mounts, where)
    for var in (v for v in (ca, cert, key) if v):
        c.check(
            on_secret(env.get(var), mounts) is not None,
            f"{where}: {var}={env.get(var, '(unset)')} is not a file of a mounted Secret ({store} over TLS)",
        )


def check_overlay(c: C.Checker, overlay: str, docs: list[dict], header: str) -> None:
    listed = C.production_secret_list(header)
    documented = documented_urls(header)
    for d in docs:
        if d["kind"] not in C.WORKLOADS:
            continue
        pod = C.pod_template(d)
        labels = pod["metadata"].get("labels", {})
        for ctr in pod["spec"].get("containers", []):
            where = f"k8s {overlay}: {d['kind']} {d['metadata']['name']}"
            env = container_env(docs, ctr, listed)
            mounts = secret_mounts(pod["spec"], ctr)
            for store in ("postgres", "redis", "nats"):
                if labels.get(f"cim/{store}-client") != "true":
                    continue
                exporter = EXPORTER_CLIENT.get(store)
                vars_ = exporter if exporter and exporter[0] in env else CIM_CLIENT[store]
                check_client(c, store, vars_, env, mounts, documented, where)
    check_postgres(c, overlay, docs)
    check_redis(c, overlay, docs)
    check_nats(c, overlay, docs)


def server(c: C.Checker, overlay: str, docs: list[dict], name: str) -> tuple[dict, dict, dict] | None:
    sts = C.k8s_find(docs, "StatefulSet", name)
    if not c.check(sts is not None, f"k8s {overlay}: no StatefulSet {name}"):
        return None
    pod = C.pod_template(sts)["spec"]
    ctr = pod["containers"][0]
    return pod, ctr, secret_mounts(pod, ctr)


def check_postgres(c: C.Checker, overlay: str, docs: list[dict]) -> None:
    found = server(c, overlay, docs, "postgres")
    if found is None:
        return
    pod, ctr, mounts = found
    where = f"k8s {overlay}: StatefulSet postgres"
    args = ctr.get("args", [])
    settings = dict(a.split("=", 1) for a in (args[i + 1] for i, a in enumerate(args[:-1]) if a == "-c") if "=" in a)
    c.check(settings.get("ssl") == "on", f"{where}: args lack -c ssl=on (Postgres serves TLS)")
    for key in ("ssl_cert_file", "ssl_key_file"):
        c.check(
            on_secret(settings.get(key), mounts) is not None,
            f"{where}: -c {key}={settings.get(key, '(unset)')} is not a file of a mounted Secret",
        )
    # The hba_file: a ConfigMap's file, with no line taking a plain connection from the network.
    hba = settings.get("hba_file", "")
    cms = {v["name"]: v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v}
    text = None
    for m in ctr.get("volumeMounts", []):
        if m["name"] in cms and hba.startswith(m["mountPath"].rstrip("/") + "/"):
            cm = C.k8s_find(docs, "ConfigMap", cms[m["name"]])
            text = ((cm or {}).get("data") or {}).get(hba[len(m["mountPath"].rstrip("/")) + 1:])
    if not c.check(text is not None, f"{where}: -c hba_file={hba or '(unset)'} is not a file of a mounted ConfigMap "
                                     f"(the image's pg_hba.conf takes plain connections)"):  # fmt: skip
        return
    lines = [ln.split() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    c.check(any(ln[0] == "hostssl" for ln in lines), f"{where}: pg_hba.conf has no hostssl line")
    for ln in lines:
        if ln[0] in ("host", "hostnossl", "hostgssenc", "hostnogssenc"):
            c.check(
                len(ln) > 3 and ln[3] in ("127.0.0.1/32", "::1/128"),
                f"{where}: pg_hba.conf line '{' '.join(ln)}' takes plain connections from the network "
                "(only hostssl may)",
            )


def check_redis(c: C.Checker, overlay: str, docs: list[dict]) -> None:
    found = server(c, overlay, docs, "redis")
    if found is None:
        return
    _, ctr, mounts = found
    where = f"k8s {overlay}: StatefulSet redis"
    words = " ".join(ctr.get("command", []) + ctr.get("args", [])).split()

    def opt(name: str) -> str | None:
        return words[words.index(name) + 1] if name in words[:-1] else None

    c.check(opt("--port") == "0", f"{where}: --port {opt('--port') or '(unset)'}, expected --port 0 (no plain port)")
    c.check(
        opt("--tls-port") == str(C.STORES["redis"]),
        f"{where}: --tls-port {opt('--tls-port') or '(unset)'}, expected {C.STORES['redis']} (the port clients use)",
    )
    for name in ("--tls-cert-file", "--tls-key-file", "--tls-ca-cert-file"):
        c.check(on_secret(opt(name), mounts) is not None,
                f"{where}: {name} {opt(name) or '(unset)'} is not a file of a mounted Secret")  # fmt: skip
    c.check(opt("--tls-auth-clients") in (None, "yes"), f"{where}: --tls-auth-clients must stay yes")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        cmd = " ".join(ctr.get(probe, {}).get("exec", {}).get("command", []))
        if "redis-cli" in cmd:
            c.check("--tls" in cmd.split(), f"{where}: {probe} runs redis-cli without --tls (no plain port to reach)")


def without_tls(conf: dict) -> dict:
    out = {k: v for k, v in conf.items() if k != "tls"}
    if isinstance(out.get("cluster"), dict):
        out["cluster"] = without_tls(out["cluster"])
    return out


def check_nats(c: C.Checker, overlay: str, docs: list[dict]) -> None:
    found = server(c, overlay, docs, "nats")
    if found is None:
        return
    _, ctr, mounts = found
    where = f"k8s {overlay}: ConfigMap nats-config nats.conf"
    cm = C.k8s_find(docs, "ConfigMap", "nats-config")
    text = ((cm or {}).get("data") or {}).get("nats.conf")
    if not c.check(text is not None, f"{where}: missing"):
        return
    # The StatefulSet mounts the Secrets; NATS reads the config from a projected volume.
    conf = C.nats_conf(text)
    # The overlay's copy of the base config differs from it by the tls blocks alone.
    c.check(
        without_tls(conf) == without_tls(C.nats_conf((C.ROOT / BASE_NATS).read_text())),
        f"{where}: differs from {BASE_NATS} by more than its tls blocks (change both)",
    )
    blocks = [("tls", "client port", conf.get("tls"))]
    if (conf.get("cluster") or {}).get("routes"):
        blocks.append(("cluster.tls", "cluster routes", (conf.get("cluster") or {}).get("tls")))
    for name, what, tls in blocks:
        if not c.check(isinstance(tls, dict), f"{where}: no {name} {{}} block (the {what} are plain)"):
            continue
        for key in ("cert_file", "key_file", "ca_file"):
            c.check(
                on_secret(tls.get(key), mounts) is not None,
                f"{where}: {name}.{key} {tls.get(key, '(unset)')} is not a file of a Secret StatefulSet nats mounts",
            )
        c.check(
            tls.get("verify") == "true",
            f"{where}: {name}.verify is {tls.get('verify', '(unset)')}, expected true (client certificates)",
        )


# --- self-test: each drift made on purpose must be found, naming the workload and setting -------


def self_test(docs: list[dict], header: str) -> list[str]:
    def run(d: list[dict], h: str = header) -> list[str]:
        c = C.Checker()
        check_overlay(c, "production", d, h)
        return c.failures

    clean = run(docs)
    assert not clean, clean

    def data(d: list[dict], name: str) -> dict:
        return C.k8s_find(d, "ConfigMap", name)["data"]

    def ctr(d: list[dict], kind: str, name: str) -> dict:
        return C.pod_template(C.k8s_find(d, kind, name))["spec"]["containers"][0]

    def env(d: list[dict], kind: str, name: str, var: str, value: str) -> None:
        next(e for e in ctr(d, kind, name)["env"] if e["name"] == var)["value"] = value

    def unmount(d: list[dict], kind: str, name: str) -> None:
        c = ctr(d, kind, name)
        c["volumeMounts"] = [m for m in c["volumeMounts"] if m["mountPath"] != "/run/tls"]

    def pg_args(d: list[dict], drop: str) -> None:
        c = ctr(d, "StatefulSet", "postgres")
        i = c["args"].index(drop)
        del c["args"][i - 1:i + 1]

    def hba_arg(d: list[dict]) -> str:
        return next(a for a in ctr(d, "StatefulSet", "postgres")["args"] if a.startswith("hba_file="))

    def hba(d: list[dict], line: str) -> None:
        cm = C.k8s_find(d, "ConfigMap", "postgres-hba")
        cm["data"]["pg_hba.conf"] += line + "\n"

    def redis_args(d: list[dict], flag: str) -> None:
        c = ctr(d, "StatefulSet", "redis")
        i = c["args"].index(flag)
        del c["args"][i:i + 2]

    def nats(d: list[dict], old: str, new: str) -> None:
        data(d, "nats-config")["nats.conf"] = data(d, "nats-config")["nats.conf"].replace(old, new, 1)

    # drift -> what the failure must name (workload and setting).
    drifts = {
        "graph's NATS CA dropped": (lambda d: data(d, "graph-config").pop("CIM_NATS_CA_FILE"),
                                     ("Deployment graph", "CIM_NATS_CA_FILE")),
        "workflow's NATS client certificate dropped": (lambda d: data(d, "workflow-config").pop("CIM_NATS_CERT_FILE"),
                                                        ("Deployment workflow", "CIM_NATS_CERT_FILE")),
        "the gateway's Redis CA dropped": (lambda d: data(d, "gateway-config").pop("CIM_REDIS_CA_FILE"),
                                           ("Deployment gateway", "CIM_REDIS_CA_FILE")),
        "the websocket's certificates unmounted": (lambda d: unmount(d, "Deployment", "websocket"),
                                                   ("Deployment websocket", "CIM_REDIS_CA_FILE")),
        "the backup's CA unmounted": (lambda d: unmount(d, "CronJob", "cim-backup"),
                                      ("CronJob cim-backup", "CIM_DATABASE_URL")),
        "the documented database URL without verify-full": (
            "header", ("Deployment document", "CIM_DATABASE_URL")),
        "the documented Redis URL plain": ("header-redis", ("Deployment gateway", "CIM_REDIS_URL")),
        "postgres-exporter back to sslmode=disable": (
            lambda d: env(d, "Deployment", "postgres-exporter", "DATA_SOURCE_URI", "postgres:5432/cim?sslmode=disable"),
            ("Deployment postgres-exporter", "DATA_SOURCE_URI")),
        "redis-exporter back to redis://": (
            lambda d: env(d, "Deployment", "redis-exporter", "REDIS_ADDR", "redis://redis:6379"),
            ("Deployment redis-exporter", "REDIS_ADDR")),
        "Postgres without ssl=on": (lambda d: pg_args(d, "ssl=on"), ("StatefulSet postgres", "ssl=on")),
        "Postgres with the image's pg_hba.conf": (lambda d: pg_args(d, hba_arg(d)), ("StatefulSet postgres", "hba_file")),
        "pg_hba.conf taking plain connections": (lambda d: hba(d, "host all all 0.0.0.0/0 scram-sha-256"),
                                                 ("StatefulSet postgres", "pg_hba.conf")),
        "Redis with its plain port back": (lambda d: redis_args(d, "--port"), ("StatefulSet redis", "--port")),
        "Redis without its certificate": (lambda d: redis_args(d, "--tls-cert-file"),
                                          ("StatefulSet redis", "--tls-cert-file")),
        "NATS without the client tls block": (lambda d: nats(d, "\ntls {", "\nno_tls {"), ("nats-config", "no tls {}")),
        "NATS routes without tls": (lambda d: nats(d, "  tls {", "  no_tls {"), ("nats-config", "cluster.tls")),
        "NATS config drifting from the base's": (lambda d: nats(d, "max_file_store: 10GB", "max_file_store: 20GB"),
                                                 ("nats-config", "k8s/base/nats/nats.conf")),
        "NATS not verifying clients": (lambda d: nats(d, "verify: true", "verify: false"),
                                       ("nats-config", "tls.verify")),
    }  # fmt: skip
    missed = []
    for what, (drift, names) in drifts.items():
        mutated, h = copy.deepcopy(docs), header
        if drift == "header":
            h = header.replace("sslmode=verify-full", "sslmode=require")
        elif drift == "header-redis":
            h = header.replace("CIM_REDIS_URL: rediss://", "CIM_REDIS_URL: redis://")
        else:
            drift(mutated)
        failures = run(mutated, h)
        if not any(all(n in f for n in names) for f in failures):
            missed.append(f"{what} (wanted a failure naming {' and '.join(names)}; got {failures or 'none'})")
    return missed


def main() -> int:
    if sys.argv[1:2] != ["--self-test"] or len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[0])
        print("usage: consistency_tls.py --self-test RENDERED-PRODUCTION.yaml")
        return 2
    docs = C.k8s_docs(Path(sys.argv[2]))
    missed = self_test(docs, (C.ROOT / PRODUCTION).read_text())
    for what in missed:
        print(f"FAIL  consistency_tls.py does not notice: {what}")
    print("consistency_tls self-test: every drift found" if not missed else "consistency_tls self-test failed")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
