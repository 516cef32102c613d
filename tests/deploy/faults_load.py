"""The fault harness's load and its readers (faults.py), run inside a namespace as
`faults.py agent JSON`; stdlib only. Each agent appends one JSON record a line to its `out` file,
flushed per line, so the harness reads what happened while the agent still runs.

Kinds:
  rest    through the load balancer, per tenant: a graph created (its name the command's marker),
          then nodes added (property cmd = the marker), one command at a time, each acknowledged
          one read back at once by another client of the tenant and then by the writer (its version
          at least the write's); and websocket
          clients per tenant that subscribe to the graph domain, record every event frame and,
          when the connection breaks, reconnect and resume with `from` = the last position seen;
          with `domains`, per tenant also a loop creating a document, an agent and a workflow
          definition in turn through the load balancer (title / name = the marker), so the other
          domains' replicas are behind the gateway's balancing under the same load
  grpc    the same commands straight to the graph replicas' gRPC ports with grpcurl, alternating
          between them (tenant and actor in the metadata, as the gateway sends them)
  stream  (faults_streams.py) one read of a stream, sequence `first` to its end
          ($JS.API.STREAM.MSG.GET), printed
  streams the same for each of `reads` ({stream, first}), in one process
  stream-limit  (faults_streams.py) a stream made full (max_bytes at its size, discard new), or its config put back
          with `limit`, also one principal of a tenant with its own small rate limit
          (CIM_GATEWAY_RATE_LIMIT_TENANTS) sending a cheap authenticated GET through the load
          balancer (so to both gateways) at a steady rate from the fault's injection on, each
          answer's status recorded: what the gateways accepted per minute across replicas
  webhook-subscribe  per tenant a webhook subscription through the load balancer as its admin
          (rehearse_webhook.subscriptions), before the window's load starts

An acknowledged command is one answered with its event ids. The agent never retries a command:
a failed one is recorded as not acknowledged, which the checks then allow to be absent.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
import uuid

import httpjson  # this directory: the HTTP call with its headers
import rehearse  # this directory: WsClient, http, uuid7
import rehearse_webhook  # this directory: the webhook subscriptions
from faults_streams import stream, stream_limit  # this directory: the JetStream reads


def marker() -> str:
    return "cmd-" + uuid.uuid4().hex


class Records:
    def __init__(self, path: str) -> None:
        self.f = open(path, "a")
        self.lock = threading.Lock()

    def add(self, **rec) -> None:
        rec.setdefault("t", time.time())
        with self.lock:
            self.f.write(json.dumps(rec) + "\n")
            self.f.flush()


def stopped(path: str) -> bool:
    return os.path.exists(path)


def command_loop(spec: dict, tenant: dict, out: Records, send) -> None:
    """Commands for one tenant until the stop file appears: a graph, then nodes on it."""
    graph = None
    while not stopped(spec["stop_cmds"]):
        m = marker()
        op = "add_node" if graph else "create_graph"
        gid = graph or rehearse.uuid7()
        t0 = time.time()
        try:
            ok, detail, event_ids = send(op, tenant, gid, m)
        except Exception as e:  # a crashed call is a failed, unacknowledged command
            ok, detail, event_ids = False, f"{type(e).__name__}: {e}", []
        out.add(kind="cmd", via=spec["kind"], tenant=tenant["tenant"], op=op, graph_id=gid, marker=m, t0=t0,
                ok=ok and bool(event_ids), detail=str(detail)[:200], event_ids=event_ids)  # fmt: skip
        if ok and op == "create_graph":
            graph = gid
        time.sleep(spec.get("pause", 0.05))
    out.add(kind="cmd-done", via=spec["kind"], tenant=tenant["tenant"])


# Per domain: a create command through the gateway, its body carrying the marker.
DOMAIN_COMMANDS = {
    "document": ("/api/v1/documents", lambda m: {"title": m}),
    "agent": ("/api/v1/agents", lambda m: {"name": m, "agent_type": "system"}),
    "workflow": ("/api/v1/workflow-definitions",
                 lambda m: {"definition": {"name": m, "steps": [{"id": "a", "kind": "automated", "set": {"n": "1"}}]}}),
}  # fmt: skip


def domain_loop(spec: dict, tenant: dict, out: Records) -> None:
    """One tenant's creates in the other domains, in turn, until the stop file appears."""
    auth = {"Authorization": f"Bearer {tenant['token']}"}
    n = 0
    while not stopped(spec["stop_cmds"]):
        domain = spec["domains"][n % len(spec["domains"])]
        n += 1
        path, body = DOMAIN_COMMANDS[domain]
        m = marker()
        t0 = time.time()
        try:
            status, answer = rehearse.http("POST", f"http://{spec['lb']}{path}", body(m), auth, timeout=8)
            if not isinstance(answer, dict):
                ok, detail, event_ids = False, f"{status} {str(answer)[:150]}", []
            else:
                ok, event_ids = status in (200, 201), answer.get("event_ids", [])
                detail = str(status) if ok else f"{status} {answer.get('type', '')} {answer.get('detail', '')}"
        except Exception as e:  # a crashed call is a failed, unacknowledged command
            ok, detail, event_ids = False, f"{type(e).__name__}: {e}", []
        out.add(kind="cmd", via="rest", domain=domain, tenant=tenant["tenant"], op=f"create_{domain}", marker=m,
                t0=t0, ok=ok and bool(event_ids), detail=f"{detail} ({domain})"[:200], event_ids=event_ids)  # fmt: skip
        time.sleep(spec.get("pause", 0.05))
    out.add(kind="cmd-done", via="rest-domains", tenant=tenant["tenant"])


def read_back(lb: str, auth: dict, gid: str, version: int, m: str, tenant: str, out: Records, by: str) -> None:
    """The graph read at once through the load balancer, `by` the client that wrote it or
    another client of its tenant: a version older than the acknowledged write's is a stale
    answer (the gateways' caches must never give one)."""
    try:
        status, headers, body = httpjson.exchange("GET", f"http://{lb}/api/v1/graphs/{gid}", headers=auth, timeout=8)
    except OSError as e:
        out.add(kind="read", by=by, tenant=tenant, graph_id=gid, marker=m, ok=None, detail=str(e)[:120])
        return
    got = body.get("version") if status == 200 and isinstance(body, dict) else None
    out.add(kind="read", by=by, tenant=tenant, graph_id=gid, marker=m, want=version, got=got,
            cache=headers.get("x-cache"), ok=None if got is None else got >= version)  # fmt: skip


def rest_send(spec: dict, out: Records):
    lb = spec["lb"]

    def send(op: str, tenant: dict, gid: str, m: str):
        auth = {"Authorization": f"Bearer {tenant['token']}"}
        if op == "create_graph":
            status, body = rehearse.http("POST", f"http://{lb}/api/v1/graphs", {"graph_id": gid, "name": m}, auth,
                                         timeout=8)  # fmt: skip
        else:
            status, body = rehearse.http("POST", f"http://{lb}/api/v1/graphs/{gid}/nodes",
                                         {"type": "probe", "properties": {"cmd": m}}, auth, timeout=8)  # fmt: skip
        if not isinstance(body, dict):
            return False, f"{status} {str(body)[:150]}", []
        detail = f"{status} {body.get('type', '')} {body.get('detail', '')}" if status >= 300 else str(status)
        if status in (200, 201) and isinstance(body.get("version"), int):
            # Another client first (no read of the writer's warmed a cache for it), then the writer.
            other = {"Authorization": f"Bearer {tenant['other_token']}"}
            read_back(lb, other, gid, body["version"], m, tenant["tenant"], out, "other")
            read_back(lb, auth, gid, body["version"], m, tenant["tenant"], out, "writer")
        return status in (200, 201), detail, body.get("event_ids", [])

    return send


def grpc_send(spec: dict):
    turn = {"n": 0}

    def send(op: str, tenant: dict, gid: str, m: str):
        targets = spec["targets"]
        target = targets[turn["n"] % len(targets)]
        turn["n"] += 1
        svc = "cim.graph.v1.GraphService"
        if op == "create_graph":
            method, data = f"{svc}/CreateGraph", {"graph_id": gid, "name": m}
        else:
            method, data = f"{svc}/AddNode", {"graph_id": gid, "node": {"type": "probe", "properties": {"cmd": m}}}
        argv = [spec["grpcurl"], "-plaintext", "-max-time", "8", "-H", f"x-cim-tenant: {tenant['tenant']}",
                "-H", "x-cim-actor: faults", "-d", json.dumps(data), target, method]  # fmt: skip
        r = subprocess.run(argv, capture_output=True, text=True, timeout=15)
        if r.returncode != 0:
            err = (r.stderr or r.stdout).strip()
            code = re.search(r"Code: (\w+)", err)
            message = re.search(r"Message: (.*)", err)
            what = f"{code.group(1)}: {message.group(1)}" if code and message else err[-150:]
            return False, f"{target}: {what[:150]}", []
        body = json.loads(r.stdout)
        return True, target, body.get("eventIds", [])

    return send


def limit_loop(spec: dict, out: Records) -> None:
    """One principal's requests at `rate` per second from the `go` file on (the fault's
    injection) until the commands stop. The limit counts fixed minutes of the gateways' clock
    (this machine's): nothing is sent in a minute's last EDGE_S, so a request's send and answer
    times fall in the minute that counted it (the checks count one that did not in both)."""
    limit = spec["limit"]
    auth = {"Authorization": f"Bearer {limit['token']}"}
    while not os.path.exists(limit["go"]):
        if stopped(spec["stop_cmds"]):
            return
        time.sleep(0.02)
    step = 1.0 / limit["rate"]
    due = time.time()
    while not stopped(spec["stop_cmds"]):
        due = max(due + step, time.time())  # steady: no burst to catch up after a stall
        time.sleep(max(0.0, due - time.time()))
        if 60 - time.time() % 60 < EDGE_S:
            time.sleep(60 - time.time() % 60 + 0.01)
        t0 = time.time()
        try:
            status, _, _ = httpjson.exchange("GET", f"http://{spec['lb']}/api/v1/auth/me", headers=auth, timeout=8)
        except OSError as e:
            status = f"{type(e).__name__}"
        out.add(kind="limit", t0=t0, status=status)


# The end of a minute the rate-limit prober sends nothing in.
EDGE_S = 0.25


class Watcher:
    """A websocket client of one tenant: every event frame recorded; on any break, a new
    connection resumed from the last position seen (or the subscription's start position)."""

    def __init__(self, spec: dict, tenant: dict, n: int, out: Records) -> None:
        self.spec, self.tenant, self.n, self.out = spec, tenant, n, out
        self.ws = None
        self.position: int | None = None

    def connect(self) -> None:
        ws = rehearse.WsClient(self.spec["lb"], 80, ["cim.v1", f"bearer.{self.tenant['token']}"], timeout=10)
        welcome = ws.recv()
        if welcome.get("type") != "welcome":
            raise RuntimeError(f"no welcome: {welcome}")
        frame = {"type": "subscribe", "id": "load", "filter": {"domain": "graph"}}
        if self.position is not None:
            frame["from"] = self.position
        ws.send(frame)
        sub = ws.recv()
        if sub.get("type") != "subscribed":
            raise RuntimeError(f"subscribe refused: {sub}")
        if self.position is None:
            self.position = sub["position"]
            self.out.add(kind="ws-start", client=self.n, tenant=self.tenant["tenant"], position=sub["position"])
        # Heartbeats keep a live connection talking; this long a silence is a dead one.
        ws.sock.settimeout(max(20.0, 2.5 * welcome.get("heartbeat_ms", 0) / 1000))
        self.ws = ws

    def run(self) -> None:
        down_since = None
        while not stopped(self.spec["stop_ws"]):
            if self.ws is None:
                try:
                    self.connect()
                    if down_since is not None:
                        self.out.add(kind="ws-resume", client=self.n, tenant=self.tenant["tenant"],
                                     position=self.position, down_s=round(time.time() - down_since, 2))  # fmt: skip
                        down_since = None
                except (OSError, RuntimeError, ValueError, KeyError) as e:
                    if down_since is None:
                        down_since = time.time()
                    self.out.add(kind="ws-error", client=self.n, tenant=self.tenant["tenant"], error=str(e)[:200])
                    time.sleep(0.3)
                continue
            try:
                frame = self.ws.recv()
            except (OSError, RuntimeError, ValueError) as e:
                if stopped(self.spec["stop_ws"]):
                    break
                down_since = time.time()
                self.out.add(kind="ws-drop", client=self.n, tenant=self.tenant["tenant"], error=str(e)[:200])
                self.close()
                continue
            if frame.get("type") == "event":
                ev = frame.get("event") or {}
                self.position = frame["position"]
                self.out.add(kind="ws", client=self.n, tenant=self.tenant["tenant"], position=frame["position"],
                             event_id=ev.get("event_id"))  # fmt: skip
            elif frame.get("type") == "error":
                self.out.add(kind="ws-error", client=self.n, tenant=self.tenant["tenant"], error=str(frame)[:200])

    def close(self) -> None:
        ws, self.ws = self.ws, None
        if ws is not None:
            try:
                ws.sock.close()
            except OSError:
                pass


def load(spec: dict) -> dict:
    out = Records(spec["out"])
    send = rest_send(spec, out) if spec["kind"] == "rest" else grpc_send(spec)
    threads, watchers = [], []
    for i, tenant in enumerate(spec["tenants"]):
        for k in range(spec.get("watchers", 0)):
            w = Watcher(spec, tenant, i * 10 + k, out)
            w.connect()  # subscribed before the first command of its tenant
            watchers.append(w)
    for w in watchers:
        threads.append(threading.Thread(target=w.run, daemon=True))
    for tenant in spec["tenants"]:
        threads.append(threading.Thread(target=command_loop, args=(spec, tenant, out, send), daemon=True))
        if spec.get("domains"):
            threads.append(threading.Thread(target=domain_loop, args=(spec, tenant, out), daemon=True))
    if spec.get("limit"):
        threads.append(threading.Thread(target=limit_loop, args=(spec, out), daemon=True))
    for t in threads:
        t.start()
    out.add(kind="started")
    while not stopped(spec["stop_ws"]) or not stopped(spec["stop_cmds"]):
        time.sleep(0.2)
    for w in watchers:
        if w.ws is not None:
            try:
                w.ws.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
    for t in threads:
        t.join(timeout=15)
    return {"ok": True}


def agent(spec: dict) -> dict:
    if spec["kind"] == "stream":
        return stream(spec)
    if spec["kind"] == "streams":
        return {"ok": True, "streams": [stream({**spec, **read}) for read in spec["reads"]]}
    if spec["kind"] == "stream-limit":
        return stream_limit(spec)
    if spec["kind"] == "webhook-subscribe":
        try:
            return rehearse_webhook.subscriptions(spec)
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            return {"ok": False, "detail": f"{type(e).__name__}: {e}"}
    return load(spec)
