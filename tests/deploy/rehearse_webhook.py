"""The webhook service's flows, for the rehearsal (tests/deploy/rehearse.py runs them for each
environment) and the live metrics check (tests/deploy/live_metrics.py drives its load with the
same receiver). Beside rehearse.py so that it stays one topology.

- A receiver: a plain http.server that answers the CloudEvents validation handshake, records
  every call (path, headers, body, the caller's address) as a JSON line, and answers 204 on /ok
  and 500 on /fail.
  In the rehearsal it runs in the `outside` host (the world, which the webhook service reaches
  through its own network `egress`: the router's webhook → outside flows), on port 80.
- `flow` (a probe inside the public host's namespace): through nginx → gateway → webhook (REST,
  as the tenant's admin), a subscription to graph events at the receiver, active after the
  handshake; then a graph created through the same load balancer, and its `graph_created` event
  arrives at the receiver as a CloudEvent signed with the subscription's secret (checked by
  `verify` of examples/webhook/receiver.py, the example receivers copy), `ce-id` = the event id.
- `start_receiver` and `subscriptions` (the same subscription, one per tenant of a list): what
  the fault harness (tests/deploy/faults.py) uses to follow every graph event of its tenants to
  the receiver while two webhook replicas deliver them.

stdlib only: the probe and the receiver run inside network namespaces.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpjson  # this directory (sys.path[0] of rehearse.py), also inside namespaces

ROOT = Path(__file__).resolve().parents[2]
# The statuses the receiver answers a call with, by path; any other path is 404.
ANSWERS = {"/ok": 204, "/fail": 500}


def example_verify():
    """`verify` of examples/webhook/receiver.py: the signature check this repository tells
    receivers to copy, so the rehearsal checks the example too."""
    spec = importlib.util.spec_from_file_location("cim_example_receiver", ROOT / "examples/webhook/receiver.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.verify


class Recorder(BaseHTTPRequestHandler):
    """Records each call through `record(dict)` (set on the class by `serve`)."""

    record = staticmethod(lambda call: None)

    def do_OPTIONS(self):  # noqa: N802 (the http.server naming)
        origin = self.headers.get("WebHook-Request-Origin")
        self.send_response(200 if origin else 400)
        if origin:
            self.send_header("WebHook-Allowed-Origin", origin)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        path = urllib.parse.urlsplit(self.path).path
        status = ANSWERS.get(path, 404)
        self.record({"path": path, "status": status, "at": time.time(), "peer": self.client_address[0],
                     "headers": {k.lower(): v for k, v in self.headers.items()},
                     "body": base64.b64encode(body).decode()})  # fmt: skip
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def serve(host: str, port: int, record) -> ThreadingHTTPServer:
    """A receiver on host:port (0: any free port) in a daemon thread; `record(call)` per call."""
    handler = type("Handler", (Recorder,), {"record": staticmethod(record)})
    server = ThreadingHTTPServer((host, port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main_receiver(port: int, log_path: str) -> None:
    """`rehearse_webhook.py receive PORT LOG`: a receiver process appending calls to LOG."""
    lock = threading.Lock()

    def record(call: dict) -> None:
        with lock, open(log_path, "a") as f:
            f.write(json.dumps(call) + "\n")

    serve("0.0.0.0", port, record)
    print(json.dumps({"listening": port}), flush=True)
    while True:
        time.sleep(3600)


def read_calls(log_path: str) -> list[dict]:
    try:
        return [json.loads(ln) for ln in Path(log_path).read_text().splitlines() if ln.strip()]
    except OSError:
        return []


def subscribe(lb: str, token: str, body: dict) -> dict:
    """A subscription registered through the load balancer (token: the tenant's admin), active
    after the handshake: the service's answer (subscription_id, secret, ...)."""
    status, sub = httpjson.call("POST", f"http://{lb}/api/v1/webhooks", body, {"Authorization": f"Bearer {token}"},
                                timeout=15)  # fmt: skip
    if status != 201:
        raise RuntimeError(f"POST /api/v1/webhooks answered {status}, expected 201: {sub}")
    if sub.get("state") != "active":
        raise RuntimeError(f"the subscription is {sub.get('state')} after the handshake: {sub.get('validation_error')}")
    return sub


def subscriptions(spec: dict) -> dict:
    """One subscription per tenant (spec: lb, url, filter, tenants: [{tenant, token (its
    admin)}]), each active after the handshake; their ids by tenant."""
    subs = {}
    for t in spec["tenants"]:
        body = {"name": f"faults {t['tenant']}", "filter": spec["filter"], "url": spec["url"]}
        subs[t["tenant"]] = subscribe(spec["lb"], t["token"], body)["subscription_id"]
    return {"ok": True, "subscriptions": subs}


def flow(spec: dict) -> dict:
    """Through the load balancer: a subscription (admin), a graph (the event), the signed call at
    the receiver. spec: lb, token (admin of a fresh tenant), receiver_url (as the webhook service
    reaches it), log (the receiver's calls)."""
    lb, auth = spec["lb"], {"Authorization": f"Bearer {spec['token']}"}

    def call(method: str, path: str, body=None, want: int = 200):
        status, data = httpjson.call(method, f"http://{lb}/api/v1{path}", body, auth, timeout=15)
        if status != want:
            raise RuntimeError(f"{method} /api/v1{path} answered {status}, expected {want}: {data}")
        return data

    t0 = time.time()  # wall clock, like the receiver's record of each call
    sub = subscribe(lb, spec["token"], {"name": "rehearsal", "filter": "graph.evt.graph.*.graph_created",
                                        "url": spec["receiver_url"]})  # fmt: skip
    graph = call("POST", "/graphs", {"name": "rehearsal webhook"}, 201)["graph_id"]
    deadline = time.monotonic() + 30
    mine: list[dict] = []
    while time.monotonic() < deadline and not mine:
        mine = [c for c in read_calls(spec["log"]) if c["headers"].get("ce-subject") == graph]
        time.sleep(0.2)
    if not mine:
        raise RuntimeError(f"no call for graph {graph} at the receiver within 30 s "
                           f"({len(read_calls(spec['log']))} calls recorded)")  # fmt: skip
    c = mine[0]
    h, body = c["headers"], base64.b64decode(c["body"])
    if not example_verify()(sub["secret"], h, body):
        raise RuntimeError(f"the signature does not verify with the subscription's secret: {h}")
    want = {"ce-specversion": "1.0", "ce-type": "cim.graph.graph_created", "ce-source": "/cim/graph/graph"}
    wrong = {k: h.get(k) for k, v in want.items() if h.get(k) != v}
    if wrong or h.get("webhook-id") != h.get("ce-id"):
        raise RuntimeError(f"CloudEvent attributes {wrong or h}, expected {want} and webhook-id = ce-id")
    got = call("GET", f"/webhooks/{sub['subscription_id']}")
    return {"ok": True, "subscription": sub["subscription_id"], "graph_id": graph, "ce_id": h.get("ce-id"),
            "calls": len(mine), "delivered": (got.get("deliveries") or {}).get("delivered"),
            "ms": round((mine[0]["at"] - t0) * 1000)}  # fmt: skip


def graphs(spec: dict) -> dict:
    """`n` graphs created through the load balancer (spec: lb, token); their ids."""
    auth = {"Authorization": f"Bearer {spec['token']}"}
    ids = []
    for i in range(spec["n"]):
        status, data = httpjson.call("POST", f"http://{spec['lb']}/api/v1/graphs", {"name": f"rehearsal {i}"}, auth,
                                     timeout=15)  # fmt: skip
        if status != 201:
            raise RuntimeError(f"POST /api/v1/graphs answered {status}: {data}")
        ids.append(data["graph_id"])
    return {"ok": True, "graph_ids": ids}


def consumer_state(r, stream: str, consumer: str) -> dict:
    """A durable consumer's state as NATS' monitoring endpoint reports it (/jsz, what KEDA's
    nats-jetstream scaler reads): num_pending, num_ack_pending, ...; {} when it is not there."""
    res = r.probe("nats", {"kind": "http", "url": "http://127.0.0.1:8222/jsz?accounts=true&streams=true&consumers=true"})
    for acc in (res.get("body") or {}).get("account_details", []):
        for st in acc.get("stream_detail", []):
            if st["name"] == stream:
                for c in st.get("consumer_detail", []):
                    if c["name"] == consumer:
                        return c
    return {}


def activation_threshold(consumer: str) -> int:
    """activationLagThreshold of the serverless overlay's trigger on `consumer`."""
    import yaml  # the rehearsal's own process only (probes stay stdlib)

    docs = yaml.safe_load_all((ROOT / "k8s/overlays/serverless/scaledobjects.yaml").read_text())
    for d in docs:
        for t in (d or {}).get("spec", {}).get("triggers", []):
            if t["metadata"].get("consumer") == consumer:
                return int(t["metadata"].get("activationLagThreshold", "0"))
    raise RuntimeError(f"k8s/overlays/serverless: no trigger on consumer {consumer}")


def start_receiver(r, log_path: Path) -> str:
    """The receiver in host `outside` on port 80 of the rehearsal `r` (rehearse.Rehearsal or the
    fault harness), appending every call to `log_path`, started unless it runs; the URL of its
    /ok path as the webhook service reaches it (network egress)."""
    if not any(n == "receiver" for n, _ in r.procs):
        r.spawn("receiver", "outside", [sys.executable, __file__, "receive", "80", str(log_path)], {})
        up = r.probe("outside", {"kind": "wait", "host": "127.0.0.1", "port": 80, "timeout": 10})
        if not up.get("ok"):
            raise r.Failed(f"the receiver in host outside did not start: {up}\n{r.tail('receiver')}")
    return f"http://outside:80{next(iter(ANSWERS))}"


def checks(r, env_of, label: str) -> None:
    """The webhook checks of one environment of the rehearsal `r` (rehearse.Rehearsal)."""
    log_path = r.tmp / "webhook-receiver.jsonl"
    url = f"http://outside:80{next(iter(ANSWERS))}"
    state: dict = {}

    def delivered():
        start_receiver(r, log_path)
        token = state["token"] = r.token(env_of("gateway"), roles="admin")
        res = r.probe("outside", {"kind": "webhook", "lb": r.resolve("outside", "nginx"), "token": token,
                                  "receiver_url": url, "log": str(log_path)})  # fmt: skip
        if not res.get("ok"):
            raise r.Failed(res.get("detail", str(res)))
        # ce-id is the event's id in the event store (receivers deduplicate by it).
        stored = r.psql_admin(f"SELECT event_id FROM graph.events WHERE aggregate_id = '{res['graph_id']}' "
                              "AND event_type = 'graph_created'")
        if stored != res["ce_id"]:
            raise r.Failed(f"ce-id {res['ce_id']}, but the graph_created event's id in Postgres is {stored}")
        return (f"subscription {res['subscription']} active after the handshake (webhook → {url}, network egress); "
                f"graph {res['graph_id']} created through nginx; its graph_created reached the receiver "
                f"{res['ms']} ms after the subscription was registered, signed (examples/webhook/receiver.py "
                f"verify), ce-id {res['ce_id']}; the subscription counts {res['delivered']} delivered")  # fmt: skip

    if not r.check(f"[{label}] a graph event reaches a webhook receiver outside, signed", delivered):
        return

    def from_zero():
        # Scale to zero and back as the serverless overlay's KEDA would, without a cluster: the
        # service stopped, events meanwhile (the intake consumer's lag, read where KEDA reads it,
        # passes the trigger's activation threshold), started again: every event arrives, each
        # under one ce-id, and the consumer drains (KEDA would let it go idle).
        consumer, n = "webhook-intake-graph", 5
        threshold = activation_threshold(consumer)
        r.stop("webhook")
        made = r.probe("outside", {"kind": "webhook-graphs", "lb": r.resolve("outside", "nginx"),
                                   "token": state["token"], "n": n})  # fmt: skip
        if not made.get("ok"):
            raise r.Failed(f"creating graphs while webhook is stopped: {made.get('detail')}")
        ids = set(made["graph_ids"])
        deadline = time.monotonic() + 15
        while (lag := consumer_state(r, "CIM_GRAPH", consumer).get("num_pending", 0)) < n and time.monotonic() < deadline:
            time.sleep(0.3)
        if lag <= threshold:
            raise r.Failed(f"{consumer} has {lag} pending with the service stopped, not above activationLagThreshold "
                           f"{threshold}: KEDA would not start it")  # fmt: skip
        if any(c["headers"].get("ce-subject") in ids for c in read_calls(str(log_path))):
            raise r.Failed("a call for a graph made while the service was stopped arrived before it started")
        r.start_service("webhook", env_of("webhook"))
        r.wait_healthy("webhook", timeout=30)
        deadline, got = time.monotonic() + 30, {}
        while time.monotonic() < deadline and set(got) != ids:
            got = {}
            for c in read_calls(str(log_path)):
                if c["headers"].get("ce-subject") in ids:
                    got.setdefault(c["headers"]["ce-subject"], set()).add(c["headers"].get("ce-id"))
            time.sleep(0.3)
        if set(got) != ids or any(len(v) != 1 for v in got.values()):
            raise r.Failed(f"after the start: calls for {len(got)} of {n} graphs, ce-ids per graph "
                           f"{sorted(len(v) for v in got.values())}")  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            st = consumer_state(r, "CIM_GRAPH", consumer)
            if st.get("num_pending", 1) == 0 and st.get("num_ack_pending", 1) == 0:
                break
            time.sleep(0.3)
        else:
            raise r.Failed(f"{consumer} did not drain after the start: {st}")
        return (f"webhook stopped; {n} graphs created meanwhile: {consumer} {lag} pending on CIM_GRAPH (NATS /jsz, "
                f"above the serverless overlay's activationLagThreshold {threshold}); started again: each of the {n} "
                "events arrived under one ce-id, and the consumer drained to 0 pending")  # fmt: skip

    r.check(f"[{label}] webhook from zero: events made while it is stopped wake it (lag) and all arrive", from_zero)


def negative(r) -> None:
    """What a subscription's URL could make the webhook service call (server-side request
    forgery), from its host through the router: the receiver outside on port 80 (control), and
    none of the HTTP listeners inside (load balancer, edges, admin ports, monitoring)."""

    def ssrf():
        inside = [(h, p) for h, p in [("nginx", 80), ("gateway", r.ports["gateway"][0]),
                                      ("websocket", r.ports["websocket"][0]), ("prometheus", 9090),
                                      ("alertmanager", 9093), ("nats", 8222),
                                      *[(s, r.ports[s][1]) for s in r.c.SERVICES if s != "webhook"]]
                  if h in r.hosts]  # fmt: skip
        probes = [("outside", 80), *inside]
        res = []
        for host, port in probes:
            addr = r.resolve("webhook", host) or r.addr[(host, r.hosts[host][0])]
            res.append((host, port, r.probe("webhook", {"kind": "tcp", "host": addr, "port": port})))
        if not res[0][2].get("ok"):
            raise r.Failed(f"control failed: the webhook host cannot reach outside:80 ({res[0][2]})")
        reached = [f"{h}:{p}" for h, p, x in res[1:] if x.get("ok")]
        if reached:
            raise r.Failed(f"the webhook host reaches {', '.join(reached)}")
        return f"outside:80 reachable (control); dropped: " + ", ".join(f"{h}:{p}" for h, p, _ in res[1:])

    if "webhook" in r.hosts:
        r.check("[negative] the webhook service reaches receivers outside, no listener inside (SSRF)", ssrf)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "receive":
        main_receiver(int(sys.argv[2]), sys.argv[3])
    else:
        raise SystemExit("usage: rehearse_webhook.py receive PORT LOG")
