"""The rehearsal's workflow flows (tests/deploy/rehearse.py runs them for each environment; this
module holds what is the workflow service's own, beside it so rehearse.py stays one topology).

- The engine alone: from the gateway's host at its CIM_GATEWAY_WORKFLOW_URLS, a definition with
  a timer between two automated steps, run to completion; the events in Postgres and
  CIM_WORKFLOW; the engine's advances and timer lateness in the workflow's own /metrics.
- Steps that reach out, in the real topology: from the public host through nginx → gateway →
  workflow (REST), an instance whose integration steps call the graph service (at the workflow's
  CIM_WORKFLOW_GRAPH_URLS, through the router's workflow → graph flow) and whose wait_event step
  is fed by the listener (durable consumer workflow-listen-graph on CIM_GRAPH, as NATS user
  workflow), while a trigger on the same stream starts a second definition that answers it. The
  graph service has the effect (REST and Postgres, written as the workflow's actor), every
  listener consumer is bound on its stream, and the workflow process counts what it sent and
  heard. A missing grant, policy or URL fails here, or in the run's NATS log check.

`outreach` runs inside the public host's namespace (`rehearse.py probe`): stdlib only.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse

import httpjson  # this directory (sys.path[0] of rehearse.py), also inside namespaces

# The answering definition: a ticket node added to any graph of the tenant starts one instance
# (the trigger, through workflow-listen-graph), which adds an answer node to that graph.
RESPONDER = {
    "name": "rehearsal responder",
    "triggers": [{"subject": "graph.evt.graph.*.node_added", "condition": "event.payload.node_type == 'ticket'"}],
    "steps": [
        {"id": "answer", "kind": "integration",
         "call": {"service": "graph", "method": "AddNode",
                  "request": "{'graph_id': trigger.aggregate_id, 'node': {'type': 'answer'}}"}},
    ],
}  # fmt: skip
# The asking definition: creates a graph, adds a ticket node to it and waits for the answer node.
# `ticket` and `answered` start in the same advance, whose commit records the wait before the
# ticket call is sent, so the answer cannot come before the wait.
ASKER = {
    "name": "rehearsal asker",
    "steps": [
        {"id": "create", "kind": "integration",
         "call": {"service": "graph", "method": "CreateGraph", "request": "{'name': name}"}},
        {"id": "ticket", "kind": "integration", "depends_on": ["create"],
         "call": {"service": "graph", "method": "AddNode",
                  "request": "{'graph_id': create.graph_id, 'node': {'type': 'ticket'}}"}},
        {"id": "answered", "kind": "wait_event", "depends_on": ["create"], "timeout_ms": 60000,
         "event": {"subject": "graph.evt.graph.*.node_added", "aggregate_id": "create.graph_id",
                   "condition": "event.payload.node_type == 'answer'"}},
    ],
}  # fmt: skip
FINAL = ("completed", "failed", "cancelled")


def outreach(spec: dict) -> dict:
    """Through the load balancer, as a writer: the two definitions created, the asker started,
    both instances run to completion, and the graph read back with both nodes."""
    lb, auth = spec["lb"], {"Authorization": f"Bearer {spec['token']}"}

    def call(method: str, path: str, body=None, want: int = 200):
        status, data = httpjson.call(method, f"http://{lb}/api/v1{path}", body, auth, timeout=10)
        if status != want:
            raise RuntimeError(f"{method} /api/v1{path} answered {status}, expected {want}: {data}")
        return data

    def until(what: str, get, done, seconds: float = 45):
        deadline, last = time.monotonic() + seconds, None
        while time.monotonic() < deadline:
            last = get()
            if done(last):
                return last
            time.sleep(0.2)
        raise RuntimeError(f"{what} within {seconds:.0f} s; last: {json.dumps(last)[:800]}")

    t0 = time.monotonic()
    responder = call("POST", "/workflow-definitions", {"definition": RESPONDER}, 201)["id"]
    asker = call("POST", "/workflow-definitions", {"definition": ASKER}, 201)["id"]
    name = f"rehearsal {spec['label']} {responder[-6:]}"
    instance = call("POST", "/workflows", {"definition_id": asker, "context": {"name": name}}, 201)["id"]
    w = until("the asker never ended", lambda: call("GET", f"/workflows/{instance}"), lambda w: w["status"] in FINAL)
    steps = {s["step_id"]: s["status"] for s in w.get("steps", [])}
    ctx = w.get("context") or {}
    heard = (ctx.get("answered") or {}).get("payload") or {}
    if w["status"] != "completed" or heard.get("node_type") != "answer":
        raise RuntimeError(f"asker {instance}: {w['status']} (error {w.get('error')!r}), steps {steps}, "
                           f"answered {ctx.get('answered')}")  # fmt: skip
    graph = (ctx.get("create") or {}).get("graph_id")
    answers = until("the triggered responder never completed",
                    lambda: call("GET", f"/workflows?definition_id={responder}")["items"],
                    lambda items: any(i["status"] == "completed" for i in items))  # fmt: skip
    if len(answers) != 1:
        raise RuntimeError(f"the ticket started {len(answers)} responder instances, not one: {answers}")
    g = until("the graph never showed both nodes", lambda: call("GET", f"/graphs/{graph}"),
              lambda g: g.get("node_count") == 2)  # fmt: skip
    if g.get("name") != name:
        raise RuntimeError(f"graph {graph} is named {g.get('name')!r}, the asker's context said {name!r}")
    return {"ok": True, "asker": instance, "responder": answers[0]["instance_id"], "graph_id": graph,
            "asker_version": w["version"], "steps": steps, "ms": round((time.monotonic() - t0) * 1000)}  # fmt: skip


def metric_values(text: str, name: str) -> dict[tuple, float]:
    """{sorted (label, value) pairs: sample} of one metric in a Prometheus text exposition."""
    out = {}
    for m in re.finditer(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", text, re.M):
        labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(1) or "")))
        out[labels] = float(m.group(2))
    return out


def checks(r, env_of, label: str) -> None:
    """Both flows for one environment; `r` is the running rehearse.Rehearsal."""
    engine_checks(r, env_of, label)
    outreach_checks(r, env_of, label)


def stream_holds(r, stream: str, total: int) -> dict:
    """Waits until `stream` holds at least `total` messages (the relay publishes within moments)."""
    deadline, st = time.monotonic() + 15, {}
    while time.monotonic() < deadline:
        j = r.probe("nats", {"kind": "http", "url": "http://127.0.0.1:8222/jsz?accounts=true&streams=true"})
        streams = {x["name"]: x for a in (j.get("body") or {}).get("account_details", [])
                   for x in a.get("stream_detail", [])}  # fmt: skip
        st = (streams.get(stream) or {}).get("state") or {}
        if st.get("messages", 0) >= total:
            return st
        time.sleep(0.5)
    raise r.Failed(f"JetStream: {stream} holds {st.get('messages')} message(s), the schema {total} event(s)")


def engine_checks(r, env_of, label: str) -> None:
    """The workflow service end to end, as the gateway would call it (from its host, at its
    CIM_GATEWAY_WORKFLOW_URLS): a definition with a timer between two automated steps, an
    instance started and run to completion by the engine; then the event store (Postgres, as
    the workflow role wrote it), its stream CIM_WORKFLOW (the relay, as NATS user workflow) and
    the engine's own metrics in the workflow process."""
    result: dict = {}

    def run_instance():
        url = env_of("gateway").get("CIM_GATEWAY_WORKFLOW_URLS", "").split(",")[0].strip()
        if not url:
            raise r.Failed("the gateway has no CIM_GATEWAY_WORKFLOW_URLS")
        u = urllib.parse.urlsplit(url)
        target = f"{u.hostname}:{u.port}"
        tenant = r.uuid7()
        headers = [f"x-cim-tenant: {tenant}", "x-cim-actor: user:rehearsal"]
        svc = "cim.workflow.v1.WorkflowService"
        definition = {"name": f"rehearsal {label}", "steps": [
            {"id": "init", "kind": "automated", "set": {"n": "1"}},
            {"id": "nap", "kind": "timer", "depends_on": ["init"], "sleep_ms": 300},
            {"id": "done", "kind": "automated", "depends_on": ["nap"], "set": {"m": "n + 1"}},
        ]}  # fmt: skip
        created = r.grpc("gateway", target, f"{svc}/CreateDefinition", json.dumps({"definition": definition}),
                         headers)["messages"][0]  # fmt: skip
        started = r.grpc("gateway", target, f"{svc}/StartWorkflow",
                         json.dumps({"definition_id": created["id"], "context": {"label": label}}),
                         headers)["messages"][0]  # fmt: skip
        instance = started["id"]
        deadline, w = time.monotonic() + 20, {}
        while time.monotonic() < deadline:
            w = r.grpc("gateway", target, f"{svc}/GetWorkflow", json.dumps({"instance_id": instance}),
                       headers)["messages"][0]  # fmt: skip
            if w.get("status") in FINAL:
                break
            time.sleep(0.2)
        steps = {st.get("stepId"): st.get("status") for st in w.get("steps", [])}
        ctx = w.get("context") or {}
        if w.get("status") != "completed" or set(steps.values()) != {"completed"} or ctx.get("m") != 2:
            raise r.Failed(f"instance {instance}: {w.get('status')}, steps {steps}, context {ctx} "
                           f"(error {w.get('error')!r})")  # fmt: skip
        result.update(tenant=tenant, instance=instance, version=int(w.get("version", 0)), definition=created["id"])
        return (f"from the gateway's host to {target}: CreateDefinition (automated → 300 ms timer → automated), "
                f"StartWorkflow; the engine completed every step (context m = 2) at version {w.get('version')}")

    if not r.check(f"[{label}] a workflow with a timer run to completion through the gateway's workflow URL",
                   run_instance):  # fmt: skip
        return

    def stored():
        tenant, instance = result["tenant"], result["instance"]
        row = r.psql_admin(f"SELECT status || ' ' || version FROM workflow.workflow_instances "
                           f"WHERE tenant_id = '{tenant}' AND instance_id = '{instance}'")  # fmt: skip
        events = int(r.psql_admin(f"SELECT count(*) FROM workflow.events WHERE aggregate_id = '{instance}'"))
        due = r.psql_admin(f"SELECT count(*) FROM workflow.workflow_due WHERE instance_id = '{instance}'")
        if row != f"completed {result['version']}" or events != result["version"]:
            raise r.Failed(f"Postgres: workflow_instances {row!r}, {events} event(s) (expected {result['version']})")
        st = stream_holds(r, "CIM_WORKFLOW", int(r.psql_admin("SELECT count(*) FROM workflow.events")))
        return (f"schema workflow: instance completed at version {result['version']}, {events} event(s), "
                f"{due} due row(s) left; CIM_WORKFLOW holds {st.get('messages')} message(s) (every event of the schema)")

    r.check(f"[{label}] the workflow instance reached Postgres and JetStream", stored)

    def engine_metrics():
        # The timer fired in the workflow's own process: its lateness was observed, and the
        # engine counted its advances (the series the dashboard and the alerts read).
        url = f"http://workflow:{r.ports['workflow'][1]}/metrics"
        text = str(r.probe("prometheus", {"kind": "http", "url": url}).get("body"))
        lateness = metric_values(text, "cim_workflow_timer_lateness_seconds_count").get((), 0)
        advanced = metric_values(text, "cim_workflow_advances_total").get((("outcome", "advanced"),), 0)
        if min(lateness, advanced) < 1:
            raise r.Failed(f"{url}: " + "; ".join(ln for ln in text.splitlines() if "cim_workflow_" in ln and "#" not in ln))
        return (f"{url} (from the monitoring network): cim_workflow_advances_total{{outcome=\"advanced\"}} "
                f"{advanced:g}, cim_workflow_timer_lateness_seconds_count {lateness:g}")

    r.check(f"[{label}] the workflow engine exports its advances and timer lateness", engine_metrics)


def outreach_checks(r, env_of, label: str) -> None:
    """Steps that reach other services, through the real topology (see the module's doc)."""
    result: dict = {}
    tenant = r.uuid7()

    def flow():
        token = r.token(env_of("gateway"), tenant)
        got = r.probe("outside", {"kind": "workflow-outreach", "lb": r.resolve("outside", "nginx"), "token": token,
                                  "label": label}, timeout=120)  # fmt: skip
        if not got.get("ok"):
            raise r.Failed(got.get("detail", str(got)))
        result.update(got)
        return (f"from the public host through nginx → gateway → workflow (REST): the asker's integration steps "
                f"called graph.CreateGraph and graph.AddNode (ticket) at the workflow's CIM_WORKFLOW_GRAPH_URLS "
                f"({env_of('workflow').get('CIM_WORKFLOW_GRAPH_URLS')}); the ticket's event started the "
                f"responder (trigger), whose AddNode (answer) event completed the asker's wait_event; "
                f"both completed, GET /api/v1/graphs shows 2 nodes ({got['ms']} ms)")

    if not r.check(f"[{label}] workflow steps call graph, a trigger and a wait_event hear its events (REST)", flow):
        return

    def effect():
        graph, asker, responder = result["graph_id"], result["asker"], result["responder"]
        nodes = r.psql_admin(f"SELECT string_agg(node_type, ',' ORDER BY node_type) FROM graph.nodes "
                             f"WHERE graph_id = '{graph}'")  # fmt: skip
        actors = r.psql_admin(f"SELECT string_agg(DISTINCT actor, ',') FROM graph.events WHERE aggregate_id = '{graph}'")
        runs = r.psql_admin(f"SELECT string_agg(status, ',' ORDER BY status) FROM workflow.workflow_instances "
                            f"WHERE tenant_id = '{tenant}' AND instance_id IN ('{asker}', '{responder}')")  # fmt: skip
        if nodes != "answer,ticket" or actors != "service:workflow" or runs != "completed,completed":
            raise r.Failed(f"Postgres: graph {graph} nodes {nodes!r} written by {actors!r}; instances {runs!r}")
        return (f"schema graph: graph {graph[:13]}… with nodes answer and ticket, every event by service:workflow; "
                f"schema workflow: asker and responder completed")

    r.check(f"[{label}] the graph service has the workflow's effect (Postgres)", effect)

    def listeners():
        want = {f"CIM_{d.upper()}": name for d, name in r.c.workflow_listeners()}
        j = r.probe("nats", {"kind": "http", "url": "http://127.0.0.1:8222/jsz?accounts=true&streams=true&consumers=true"})
        consumers = {st["name"]: {c["name"]: c for c in st.get("consumer_detail", [])}
                     for a in (j.get("body") or {}).get("account_details", []) for st in a.get("stream_detail", [])}  # fmt: skip
        missing = [f"{name} on {st}" for st, name in want.items() if name not in consumers.get(st, {})]
        if not want or missing:
            raise r.Failed(f"listener consumers missing: {missing or 'workflow::listen declares none'}")
        graph = consumers["CIM_GRAPH"][want["CIM_GRAPH"]]
        acked = graph.get("ack_floor", {}).get("stream_seq", 0)
        if acked < 3:
            raise r.Failed(f"{want['CIM_GRAPH']} acked up to stream sequence {acked}: {graph}")
        return (f"durables bound as NATS user workflow: " + ", ".join(f"{n} on {st}" for st, n in want.items())
                + f"; {want['CIM_GRAPH']} acked CIM_GRAPH up to {acked}")

    r.check(f"[{label}] the workflow listener's durable consumers are bound on every domain stream", listeners)

    def counted():
        url = f"http://workflow:{r.ports['workflow'][1]}/metrics"
        text = str(r.probe("prometheus", {"kind": "http", "url": url}).get("body"))
        got = {
            'cim_workflow_outreach_total{kind="call",outcome="sent"}':
                metric_values(text, "cim_workflow_outreach_total").get((("kind", "call"), ("outcome", "sent")), 0),
            'cim_workflow_deliveries_total{outcome="taken"}':
                metric_values(text, "cim_workflow_deliveries_total").get((("outcome", "taken"),), 0),
            'cim_workflow_triggered_total{outcome="taken"}':
                metric_values(text, "cim_workflow_triggered_total").get((("outcome", "taken"),), 0),
            'cim_consumer_handled_total{consumer="workflow-listen-graph",outcome="applied"}':
                metric_values(text, "cim_consumer_handled_total").get(
                    (("consumer", "workflow-listen-graph"), ("outcome", "applied")), 0),
        }  # fmt: skip
        least = {k: 3 if "outreach" in k or "consumer" in k else 1 for k in got}
        short = [f"{k} {v:g} (at least {least[k]})" for k, v in got.items() if v < least[k]]
        if short:
            raise r.Failed(f"{url}: " + "; ".join(short))
        return f"{url}: " + ", ".join(f"{k} {v:g}" for k, v in got.items())

    r.check(f"[{label}] the workflow process counts its calls, deliveries, triggers and listener events", counted)
