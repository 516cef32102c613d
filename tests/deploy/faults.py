#!/usr/bin/env python3
"""The scaling and fault harness (issue 22, docs/deployment.md "Scaling"): the rehearsal's hosts
(rehearse.py: network namespaces on compose's addresses behind a router that allows only the
design's flows) with replicas, then faults one at a time (or two overlapping) under a load that
records everything, and after each the checks that nothing acknowledged was lost or duplicated.

Topology (faults_hosts.py): a three-node NATS cluster (nats, nats2, nats3) and the services with
CIM_STREAM_REPLICAS=3 and all three NATS URLs; graph, document, agent, workflow, webhook, gateway
and websocket twice each on hosts of their own (graph2, ...) behind nginx and the gateway's gRPC
balancing; MinIO (moto), Postgres and Redis once (they are stateful and not replicated by CIM);
the rehearsal's webhook receiver (rehearse_webhook.py) in the `outside` host, recording every
call, which both webhook replicas reach through the router's webhook → outside flows; Prometheus
scraping every replica and the Postgres, Redis and blackbox exporters (NATS' health on each node)
each second with the repository's rules. An `ops` host (application and
data networks) sends the direct gRPC load, reads the streams, switches a full store on and off
and runs `cim doctor`. The rest of monitoring is not run here (the rehearsal covers it); the
flows of replicas are their service's.

Each fault gets a window with fresh tenants: per REST tenant a webhook subscription to its graph
events at the receiver's /ok path (through nginx → gateway → webhook, as the tenant's admin,
active after the handshake), then the load starts (faults_load.py: REST through nginx and gRPC
straight to the graph replicas; per REST tenant a document, an agent and a workflow definition
created in turn through nginx; websocket clients per tenant resuming with `from`), the fault is
injected, `cim doctor` runs while it lasts, it is healed (the alerts of the window then read from
Prometheus' ALERTS series), the
load runs until every channel succeeds again, the commands stop, the outboxes drain, the streams
are read, the websocket clients get what CIM_GRAPH holds and the receiver every event the
subscriptions should bring (up to WEBHOOK_PATIENCE_S). Then, per fault: every acknowledged
command's marker exactly once in its domain's events table and exactly once in its stream (and
its event ids there); every websocket client saw each event of its tenant after its start once,
with no gap; every event id of a REST tenant's acknowledged graph commands at the receiver (its
`ce-id`) at least once, calls repeated counted (webhooks are at least once); no read back of an
acknowledged graph write, by the writer or by another client of its tenant, older than it; a principal of a
tenant with its own small rate limit, sending through nginx from the injection on, accepted per
minute by both gateways together within the documented overshoot, and refused; the alert a rule
should raise pending or firing (ALERT_SHOULD_NAME). At the end every stream read has no message
id twice, `cim verify` passes for every domain run and the graph projections equal a replay
(`cim replay --domain graph` rebuilds them from the events; their contents before and after
compared).

The faults (FAULTS; injected, healed and watched for in faults_inject.py): SIGKILL of a service
replica (restarted as an orchestrator would, after HOLD seconds); SIGKILL of a NATS node
(restarted); a NATS node partitioned (every packet but loopback dropped by nftables in its
namespace), then healed; Postgres stopped (fast shutdown) and started; Redis killed and started; a
slow network on one graph replica's host (tc tbf rate limit plus 5 % packet loss by nftables: this
kernel has no netem); a full store (every domain's stream at max_bytes = what it holds, discard new:
JetStream refuses every publish as a full max_file_store does; commands must still be acknowledged,
their events held in the outboxes and relayed once each config is put back); and, in --heavy, two
mixed faults (a graph replica killed during a NATS partition; Postgres restarted while Redis is
down) and two faults held past their alert's `for:` (a graph replica killed, Postgres stopped,
HELD_S each), whose alert must have fired.

usage: faults.py run --tools FILE --tmp DIR [--heavy] [--only F,..] [--out FILE]   (scripts/faults.sh)
       faults.py agent JSON                                          (inside a namespace)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import faults_check  # this directory: the checks and the table
import faults_end  # this directory: the checks at the end
import faults_load  # this directory: the agents inside namespaces (the load; the stream reads)
import rehearse_webhook  # this directory: the webhook receiver
from faults_hosts import DOMAINS, LIMIT_PER_MINUTE, LIMIT_RATE, LIMIT_TENANT, REPLICATED, STORES
from faults_inject import (ALERT_SHOULD_NAME, DOCTOR_SHOULD_NAME, HELD, HELD_S, PER_HOST, Injection, alert_host,
                           base, fail_key, subject)  # fmt: skip
from rehearse import Failed, log, uuid7

MARKER = re.compile(r"cmd-[0-9a-f]{32}")

# Each fault: the (kind, host) injected together, in order (healed in the reverse order); two
# make a mixed fault, the second injected while the first lasts. In the order run. The bounded
# set (the suite) is one of each kind of fault.
STORE_FULL = ("store-full", "streams")  # every domain's stream at its max_bytes, discard new
FAULTS = [[("kill", "graph")], [("kill", "graph2")], [("kill", "document")], [("kill", "document2")],
          [("kill", "agent")], [("kill", "agent2")], [("kill", "workflow")], [("kill", "workflow2")],
          [("kill", "webhook")], [("kill", "webhook2")], [("kill", "gateway")], [("kill", "gateway2")],
          [("kill", "websocket")], [("kill", "websocket2")],
          [("kill-nats", "nats2")], [("partition", "nats3")], [("restart", "postgres")], [("restart", "redis")],
          [("slow", "graph2")], [STORE_FULL], [("partition", "nats3"), ("kill", "graph2")],
          [("restart", "redis"), ("restart", "postgres")], [("kill-held", "graph2")],
          [("restart-held", "postgres")]]  # fmt: skip
BOUNDED = [[("kill", "graph2")], [("kill", "document2")], [("kill", "webhook2")], [("kill", "gateway")],
           [("kill", "websocket2")], [("kill-nats", "nats2")], [("partition", "nats3")], [("restart", "postgres")],
           [("restart", "redis")], [("slow", "graph2")], [STORE_FULL]]  # fmt: skip
# How long after the heal an alert still counts as this fault's (see `window`).
ALERT_LAG_S = 5.0
# What the window's webhook subscriptions match: every graph event of their tenant.
WEBHOOK_FILTER = "graph.evt.>"
# How long after the streams were read the receiver may still be waiting for an event: a replica
# killed holding intake messages unacknowledged holds back the ack floor, so every later
# delivery, until they come again (the intake consumer's ack wait, 30 s), and a call it had
# claimed is made again when its lease lapses (CIM_WEBHOOK_TIMEOUT_MS + 5 s). What is still
# missing then counts as lost.
WEBHOOK_PATIENCE_S = 60.0


class Faults(Injection):
    def __init__(self, tools: dict, tmp: Path, heavy: bool) -> None:
        super().__init__(tools, tmp)
        self.heavy = heavy
        self.faults = FAULTS if heavy else BOUNDED
        self.rows: list[dict] = []
        # Per domain: its stream read up to here, and what was read.
        self.stream_seen = {d: 0 for d in STORES}
        self.stream_msgs: dict[str, list[dict]] = {d: [] for d in STORES}
        # The webhook receiver's log, its calls ({id: ce-id, tenant, status, by: the replica's host})
        # and how far it was read.
        self.hook_log = tmp / "webhook-receiver.jsonl"
        self.hook_calls: list[dict] = []
        self.hook_read = 0
        self.stream_cluster: dict[str, tuple] = {}
        # Bounded: a few tenants and short windows (2 shared cores); heavy: more of both.
        self.tenants = (3, 2) if heavy else (2, 1)  # REST tenants, gRPC tenants
        self.hold = 6.0 if heavy else 3.0
        self.steady = 5.0 if heavy else 1.5

    # --- the streams, read from the ops host --------------------------------------------------

    def read_streams(self) -> dict[str, list[dict]]:
        """Every domain's stream's messages since the last read (one agent for all), kept for the
        whole run's checks; answers those just read, per domain."""
        domains = STORES
        r = self.agent("ops", {"kind": "streams", "host": "nats", "port": 4222, "user": "cim",
                               "password": self.env_of("nats")["NATS_PASSWORD_CIM"],
                               "reads": [{"stream": f"CIM_{d.upper()}", "first": self.stream_seen[d] + 1}
                                         for d in domains]})  # fmt: skip
        if not r.get("ok"):
            raise Failed(f"reading the streams: {r.get('detail')}")
        fresh = {}
        for domain, one in zip(domains, r["streams"]):
            if not one.get("ok"):
                raise Failed(f"reading CIM_{domain.upper()}: {one.get('detail')}")
            for m in one["messages"]:
                try:
                    data = json.loads(m["data"])
                except ValueError:
                    data = {}
                m["event_id"] = m["msg_id"] or data.get("event_id")
                m["tenant"] = data.get("tenant_id")
                m["markers"] = MARKER.findall(m["data"])
            self.stream_msgs[domain] += one["messages"]
            self.stream_seen[domain] = one["last_seq"]
            self.stream_cluster[domain] = (one.get("leader"), one.get("replicas"))
            fresh[domain] = one["messages"]
            if one.get("retried"):
                log(f"reading CIM_{domain.upper()}: {one['retried']} MSG.GET answered an error first and were asked again")
        return fresh

    def read_streams_holding(self, tenants: list[str], patience: float = 20) -> dict[str, list[dict]]:
        """The streams read until they hold every event these tenants have in Postgres, or
        `patience` has passed (what is still missing then counts as lost). Right after a NATS
        node rejoins, a read can end before events the outbox already had acknowledged (seen
        after the nats3 partition: 141 events that the read at the end found): asked again, a
        lag shows as a delay, only a loss stays missing."""
        t0 = time.monotonic()
        fresh = self.read_streams()
        while True:
            seen = {m["event_id"] for msgs in self.stream_msgs.values() for m in msgs}
            missing = sum(1 for d in STORES for e in self.pg_events(d, tenants) if e[0] not in seen)
            if not missing or time.monotonic() - t0 > patience:
                return fresh
            log(f"the streams lack {missing} event(s) of this window {time.monotonic() - t0:.1f}s after the outboxes "
                "drained: read again")  # fmt: skip
            time.sleep(1.0)
            for domain, msgs in self.read_streams().items():
                fresh[domain] = fresh.get(domain, []) + msgs

    def outbox_drained(self, timeout: float = 60) -> float:
        """Every domain's outbox empty: each acknowledged event relayed to its stream."""
        t0 = time.monotonic()
        sql = "SELECT " + " + ".join(f"(SELECT count(*) FROM {d}.outbox)" for d in STORES)
        while time.monotonic() - t0 < timeout:
            try:
                if self.psql_admin(sql) == "0":
                    return time.monotonic() - t0
            except Failed:
                pass
            time.sleep(0.3)
        raise Failed(f"the outboxes not empty after {timeout:.0f}s")

    # --- webhooks -----------------------------------------------------------------------------

    def subscribe(self, tenants: list[str]) -> dict:
        """Per tenant a subscription to its graph events at the receiver, through nginx → gateway →
        webhook as the tenant's admin, active after the handshake (from `outside`, as a client);
        their ids by tenant."""
        env = self.env_of("gateway")
        r = self.agent("outside", {"kind": "webhook-subscribe", "lb": self.resolve("outside", "nginx"),
                                   "url": self.hook_url, "filter": WEBHOOK_FILTER,
                                   "tenants": [{"tenant": t, "token": self.token(env, t, roles="admin")}
                                               for t in tenants]})  # fmt: skip
        if not r.get("ok"):
            raise Failed(f"webhook subscriptions: {r.get('detail')}")
        return r["subscriptions"]

    def webhook_calls(self) -> list[dict]:
        """Every call the receiver recorded so far (its log read on from where it was left)."""
        try:
            with open(self.hook_log, "rb") as f:
                f.seek(self.hook_read)
                data = f.read()
        except OSError:
            return self.hook_calls
        whole = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
        self.hook_read += len(whole)
        # The router does not translate addresses: a call comes from its replica's egress address.
        by = {a: h for (h, _), a in self.addr.items() if self.base.get(h, h) == "webhook"}
        for ln in whole.splitlines():
            c = json.loads(ln)
            self.hook_calls.append({"id": c["headers"].get("ce-id"), "tenant": c["headers"].get("ce-cimtenant"),
                                    "status": c["status"], "by": by.get(c.get("peer"), c.get("peer"))})  # fmt: skip
        return self.hook_calls

    def window(self, parts: list[tuple[str, str]]) -> dict:
        """One fault (its parts overlapping) under load, then its checks: a row of the table."""
        kind, host = "+".join(k for k, _ in parts), "+".join(h for _, h in parts)
        tag = f"{len(self.rows):02d}-{kind}-{host}"
        d = self.tmp / "logs" / "load" / tag  # with the logs: kept on failure or CIM_REHEARSE_KEEP_LOGS
        d.mkdir(parents=True)
        os.chmod(d, 0o777)
        n_rest, n_grpc = self.tenants
        tenants = [uuid7() for _ in range(n_rest + n_grpc)]
        # Before the load's first command, so that every graph event of these tenants matches.
        t_sub = time.monotonic()
        subscriptions = self.subscribe(tenants[:n_rest])
        subscribe_s = time.monotonic() - t_sub
        env = self.env_of("gateway")
        common = {"stop_cmds": str(d / "stop-cmds"), "stop_ws": str(d / "stop-ws")}
        # A fresh principal of the rate-limited tenant: its counts start at none in this window.
        limit = {"token": self.token(env, LIMIT_TENANT, roles="reader", subject=f"limit-{uuid7()}"),
                 "go": str(d / "go-limit"), "rate": LIMIT_RATE}  # fmt: skip
        rest = {**common, "kind": "rest", "lb": self.resolve("outside", "nginx"), "watchers": 2, "out": str(d / "rest.jsonl"),
                "domains": DOMAINS, "limit": limit,
                "tenants": [{"tenant": t, "token": self.token(env, t),
                             "other_token": self.token(env, t, roles="reader", subject="other-reader")}
                            for t in tenants[:n_rest]]}  # fmt: skip
        grpc = {**common, "kind": "grpc", "grpcurl": self.tools["grpcurl"], "out": str(d / "grpc.jsonl"),
                "targets": [f"{g}:{self.ports['graph'][0]}" for g in self.replicas("graph")],
                "tenants": [{"tenant": t} for t in tenants[n_rest:]]}  # fmt: skip
        agents = [self.spawn(f"load-{tag}-rest", "outside", [sys.executable, __file__, "agent", json.dumps(rest)], {}),
                  self.spawn(f"load-{tag}-grpc", "ops", [sys.executable, __file__, "agent", json.dumps(grpc)], {})]
        files = [d / "rest.jsonl", d / "grpc.jsonl"]
        injected: list[tuple[str, str]] = []  # healed in the reverse order, also when the window fails
        held = None
        try:
            faults_check.wait_for(lambda: all(any(r["kind"] == "started" for r in faults_check.records(f))
                                              for f in files), 30, "the load agents never started")  # fmt: skip
            time.sleep(self.steady)
            t_fault = time.time()
            Path(limit["go"]).touch()  # the rate-limited principal starts with the fault
            for i, part in enumerate(parts):
                if i:
                    time.sleep(1.0)  # the next part while the first lasts
                injected.append(part)
                self.inject(*part)
            doctor: dict = {}
            dt = threading.Thread(target=lambda: doctor.update(zip(("fails", "lines"), self.doctor())))
            dt.start()
            time.sleep(HELD_S if any(k.endswith(HELD) for k, _ in parts) else self.hold)
            dt.join(timeout=45)
            if STORE_FULL in parts:  # what the outboxes hold back while no publish is taken
                held = self.outbox_held()
            while injected:
                self.heal(*injected.pop())
            t_heal = time.time()
            # Seeing a fault lags it by up to a readiness check (every 2 s), a scrape and a rule
            # evaluation (1 s each): an alert that turns pending within that lag of the heal was
            # raised by this fault (a 3 s Postgres restart under load was seen only after it).
            recovered = faults_check.wait_recovered(files, t_heal, 90)
            # Every rule evaluation of the window, the last one (1 s) written.
            time.sleep(max(0.0, t_heal + ALERT_LAG_S + 1.0 - time.time()))
            alerts = self.alerts_between(t_fault, t_heal + ALERT_LAG_S) - self.alerts_baseline
            time.sleep(self.steady)
            (d / "stop-cmds").touch()
            loops = len(tenants) + (n_rest if DOMAINS else 0)  # graph per tenant, the other domains per REST tenant
            faults_check.wait_for(lambda: sum(r["kind"] == "cmd-done" for f in files for r in faults_check.records(f))
                                  == loops, 30, "the command loops did not stop")  # fmt: skip
            self.outbox_drained()
            fresh = self.read_streams_holding(tenants)
            faults_check.wait_for(lambda: faults_check.watchers_caught_up(faults_check.records(files[0]),
                                                                          self.stream_msgs["graph"]), 20, None)  # fmt: skip
            t_hook = time.monotonic()
            hooked = faults_check.webhook_expected(faults_check.records(files[0]), set(subscriptions))
            faults_check.wait_for(lambda: hooked <= {c["id"] for c in self.webhook_calls()}, WEBHOOK_PATIENCE_S, None)
            hook_wait = time.monotonic() - t_hook
        finally:
            while injected:  # the window failed with its fault in place: the next one needs it gone
                k, h = injected.pop()
                try:
                    self.heal(k, h)
                except Failed as e:
                    log(f"healing {k} {h} after a failed window: {e}")
            (d / "stop-cmds").touch()
            (d / "stop-ws").touch()
            for p in agents:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
        recs = [r for f in files for r in faults_check.records(f)]
        pg = {domain: self.pg_events(domain, tenants) for domain in STORES}
        row = faults_check.row(kind, host, recs, pg, self.stream_msgs, t_fault, t_heal, recovered)
        row["webhook"] = faults_check.webhook(recs, self.webhook_calls(), set(subscriptions), subscriptions, hook_wait)
        row["webhook"]["subscribe_s"] = round(subscribe_s, 1)
        # What of the fault can cost the limiter counts, while it lasted (and a flush after).
        lost = {"gateway" if h.startswith("gateway") else h: (t_fault, t_heal + 1.0)
                for k, h in parts if (base(k) == "kill" and h.startswith("gateway")) or h == "redis"}  # fmt: skip
        row["rate_limit"] = faults_check.rate_limit(recs, LIMIT_PER_MINUTE, LIMIT_RATE, len(self.replicas("gateway")),
                                                    lost)  # fmt: skip
        row["doctor"] = doctor.get("fails", ["did not finish"])
        # New: a check failing on something it did not fail on before any fault (the same check
        # may fail on another stream or consumer from the start).
        new_lines = [ln for ln in doctor.get("lines", []) if fail_key(ln) not in self.doctor_baseline]
        row["doctor_new"] = sorted({ln.split()[1] for ln in new_lines})
        row["doctor_lines"] = new_lines[:4]
        row["alerts"] = sorted(f"{a} ({state}) {where}" for a, state, where in alerts)
        # Each part of the fault that a rule should see: a replica's death by its own
        # instance's alert, a store's by the alert from any service; pending will do, but a
        # held fault's alert must have fired.
        named, row["alert_expected"] = [], []
        for k, h in parts:
            for want in sorted(ALERT_SHOULD_NAME.get(subject(k, h), ())):
                row["alert_expected"].append(want + (" firing" if k.endswith(HELD) else ""))
                named.append(any(a == want and (a not in PER_HOST or alert_host(where) == h)
                                 and (state == "firing" or not k.endswith(HELD)) for a, state, where in alerts))
        row["alert_named"] = all(named) if named else None
        wants = [DOCTOR_SHOULD_NAME.get(subject(k, h)) for k, h in parts]
        wants = [w for w in wants if w is not None]
        # A mixed fault: doctor should name each part it checks.
        row["doctor_named"] = None if not wants else all(w & set(row["doctor_new"]) for w in wants)
        row["stream_messages"] = {d: len(m) for d, m in fresh.items()}
        if held is not None:
            # Commands acknowledged while no stream took a publish (durable in Postgres only),
            # and what the outboxes held back then: both must be more than none for the fault
            # to have been one, and the checks above find every one relayed once.
            row["acknowledged_while_full"] = sum(r["kind"] == "cmd" and r["ok"] and r["t0"] >= t_fault
                                                 and r["t"] <= t_heal for r in recs)  # fmt: skip
            row["held_in_outbox"] = held
        return row

    def pg_events(self, domain: str, tenants: list[str]) -> list[tuple[str, str, str]]:
        """(event_id, tenant, marker or '-') of every event of these tenants in the domain's schema."""
        ids = ", ".join(f"'{t}'" for t in tenants)
        out = self.psql_admin("SELECT event_id || ' ' || tenant_id || ' ' || coalesce(substring(payload::text from "
                              f"'cmd-[0-9a-f]{{32}}'), '-') FROM {domain}.events WHERE tenant_id IN ({ids})")  # fmt: skip
        return [tuple(ln.split()) for ln in out.splitlines() if ln.strip()]

    # --- the end: the whole stream, hash chains, projections against a replay -----------------

    def run(self) -> int:
        t_total = time.monotonic()
        try:
            (self.tmp / "bin").mkdir()
            os.chmod(self.tmp / "bin", 0o755)
            Path(self.tmp / "bin" / "cim").write_bytes(Path(self.tools["cim"]).read_bytes())
            os.chmod(self.tmp / "bin" / "cim", 0o755)
            self.tools["cim"] = str(self.tmp / "bin" / "cim")
            self.render()
            self.plan()
            self.build_network()
            log(f"hosts: {', '.join(self.hosts)} ({len(self.flows)} allowed flows)")
            up = self.bring_up()
            log(f"UP in {up:.1f}s: NATS x3 (R3 streams), " + ", ".join(f"{s} x{len(self.replicas(s))}" for s in REPLICATED))
            self.hook_url = rehearse_webhook.start_receiver(self, self.hook_log)
            log(f"webhook receiver in host outside, subscriptions to {self.hook_url}")
            # What doctor fails before any fault, in two runs: a check that times out once on
            # this busy machine must not hide the fault it names later.
            _, lines = self.doctor()
            self.doctor_baseline = {fail_key(ln) for ln in lines} & {fail_key(ln) for ln in self.doctor()[1]}
            lines = [ln for ln in lines if fail_key(ln) in self.doctor_baseline]
            log("cim doctor before any fault: " + ("; ".join(lines) or "every check passes"))
            self.alerts_baseline = self.alerts()
            log("alerts before any fault: " + (", ".join(f"{a} ({s}) {w}" for a, s, w in sorted(self.alerts_baseline))
                                               or "none pending or firing"))  # fmt: skip
            for parts in self.faults:
                t0 = time.monotonic()
                try:
                    row = self.window(parts)
                except Exception as e:  # a window that crashed is a failed row, with why; the next runs
                    row = {"fault": "+".join(k for k, _ in parts), "host": "+".join(h for _, h in parts),
                           "error": f"{type(e).__name__}: {e}" if not isinstance(e, Failed) else str(e)}  # fmt: skip
                row["window_s"] = round(time.monotonic() - t0, 1)
                self.rows.append(row)
                log(faults_check.describe(row))
            faults_end.final_checks(self)
        except Failed as e:
            self.results.append(("bring-up", False, 0.0, str(e)))
            print(f"faults: FAIL  bring-up: {e}", flush=True)
        finally:
            self.teardown()
        return faults_check.report(self, time.monotonic() - t_total)


def main() -> int:
    if len(sys.argv) >= 3 and sys.argv[1] == "agent":
        print(json.dumps(faults_load.agent(json.loads(sys.argv[2]))), flush=True)
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["run"])
    ap.add_argument("--tools", type=Path, required=True, help="JSON: tool name -> path")
    ap.add_argument("--tmp", type=Path, required=True)
    ap.add_argument("--heavy", action="store_true", help="every replica and fault, longer windows, more tenants")
    ap.add_argument("--out", type=Path, default=Path("/var/tmp/cim-faults.json"), help="the fault table as JSON")
    ap.add_argument("--only", help="these faults of the mode's set, as the table names them: kill:graph2,partition:nats3")
    args = ap.parse_args()
    f = Faults(json.loads(args.tools.read_text()), args.tmp, args.heavy)
    if args.only:
        names = set(args.only.split(","))
        f.faults = [p for p in f.faults if f"{'+'.join(k for k, _ in p)}:{'+'.join(h for _, h in p)}" in names]
    f.out = args.out

    def interrupted(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        return f.run()
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
