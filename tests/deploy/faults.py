#!/usr/bin/env python3
"""The scaling and fault harness (issue 22, docs/deployment.md "Scaling"): the rehearsal's hosts
(rehearse.py: network namespaces on compose's addresses behind a router that allows only the
design's flows) with replicas, then faults one at a time under a load that records everything,
and after each the checks that nothing acknowledged was lost or duplicated.

Topology (faults_hosts.py): a three-node NATS cluster (nats, nats2, nats3) and the services with
CIM_STREAM_REPLICAS=3 and all three NATS URLs; graph, gateway and websocket twice each on hosts of
their own (graph2, ...) behind nginx and the gateway's gRPC balancing; Postgres and Redis once
(they are stateful and not replicated by CIM). An `ops` host (application and data networks) sends the direct gRPC load,
reads the stream and runs `cim doctor`. The other domain services and monitoring are not run here
(the rehearsal covers them); the flows of replicas are their service's flows.

Each fault gets a window with fresh tenants: the load starts (faults_load.py: REST through nginx
and gRPC straight to the graph replicas, websocket clients per tenant resuming with `from`), the
fault is injected, `cim doctor` runs while it lasts, it is healed, the load runs until every
channel succeeds again, the commands stop, the outbox drains, the stream is read and the
websocket clients get what it holds. Then, per fault: every acknowledged command's marker exactly
once in graph.events and exactly once in CIM_GRAPH (and its event ids there); every websocket
client saw each event of its tenant after its start once, with no gap. At the end the whole stream
has no message id twice, `cim verify --domain graph` passes and the projections equal a replay
(`cim replay --domain graph` rebuilds them from the events; their contents before and after
compared).

The faults (FAULTS): SIGKILL of a service replica (restarted as an orchestrator would, after
HOLD seconds); SIGKILL of a NATS node (restarted); a NATS node partitioned (every packet but
loopback dropped by nftables in its namespace), then healed; Postgres stopped (fast shutdown)
and started; Redis killed and started; a slow network on one graph replica's host (tc tbf rate
limit plus 5 % packet loss by nftables: this kernel has no netem).

usage: faults.py run --tools FILE --tmp DIR [--heavy] [--out FILE]   (scripts/faults.sh)
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
import urllib.parse
from collections import Counter
from pathlib import Path

import faults_check  # this directory: the checks and the table
import faults_load  # this directory: the load and the stream reader (inside namespaces)
from faults_hosts import NATS_NODES, REPLICATED, ReplicatedHosts
from rehearse import Failed, log, uuid7

MARKER = re.compile(r"cmd-[0-9a-f]{32}")

# (kind, host): in the order run. The bounded set (the suite) is one of each kind of fault.
FAULTS = [("kill", "graph"), ("kill", "graph2"), ("kill", "gateway"), ("kill", "gateway2"), ("kill", "websocket"),
          ("kill", "websocket2"), ("kill-nats", "nats2"), ("partition", "nats3"), ("restart", "postgres"),
          ("restart", "redis"), ("slow", "graph2")]  # fmt: skip
BOUNDED = [("kill", "graph2"), ("kill", "gateway"), ("kill", "websocket2"), ("kill-nats", "nats2"),
           ("partition", "nats3"), ("restart", "postgres"), ("restart", "redis"), ("slow", "graph2")]  # fmt: skip
# What `cim doctor` should name while the fault lasts (any of its checks of that store); absent:
# outside what it checks (it does not look at the services themselves).
NATS_CHECKS = {"nats", "cluster", "stream", "consumer", "dlq"}
DOCTOR_SHOULD_NAME = {"kill-nats": NATS_CHECKS, "partition": NATS_CHECKS, "postgres": {"postgres"}, "redis": {"redis"}}


class Faults(ReplicatedHosts):
    def __init__(self, tools: dict, tmp: Path, heavy: bool) -> None:
        super().__init__(tools, tmp)
        self.heavy = heavy
        self.rows: list[dict] = []
        self.stream_seen = 0  # CIM_GRAPH read up to here
        self.stream_msgs: list[dict] = []
        # Bounded: a few tenants and short windows (2 shared cores); heavy: more of both.
        self.tenants = (3, 2) if heavy else (2, 1)  # REST tenants, gRPC tenants
        self.hold = 6.0 if heavy else 3.0
        self.steady = 5.0 if heavy else 1.5

    # --- tools run from the ops host ----------------------------------------------------------

    def ops_env(self) -> dict[str, str]:
        pg, nats = self.env_of("postgres"), self.env_of("nats")
        return {
            "CIM_DATABASE_URL": f"postgres://{pg.get('POSTGRES_USER', 'postgres')}:{urllib.parse.quote(pg['POSTGRES_PASSWORD'])}"
                                f"@postgres:5432/{pg.get('POSTGRES_DB', 'cim')}",
            "CIM_NATS_URL": ",".join(f"nats://cim:{urllib.parse.quote(nats['NATS_PASSWORD_CIM'])}@{n}:4222"
                                     for n in NATS_NODES),
            # The operators' user (the default one), as the healthcheck: the services' users
            # may not run what doctor's connection does.
            "CIM_REDIS_URL": f"redis://default:{urllib.parse.quote(self.env_of('redis')['REDIS_PASSWORD'])}@redis:6379",
            "CIM_STREAM_REPLICAS": "3",
            "CIM_CONNECT_TIMEOUT_MS": "3000",
        }  # fmt: skip

    def cim(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns("ops"), self.tools["cim"], *args],
                              env={"PATH": "/usr/bin:/bin", **self.ops_env()}, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip

    def doctor(self) -> tuple[list[str], list[str]]:
        """The checks `cim doctor` fails (their names) and its FAIL lines."""
        try:
            r = self.cim("doctor", timeout=40)
        except subprocess.TimeoutExpired:
            return ["timeout"], ["cim doctor: no answer within 40 s"]
        lines = [ln.strip()[:160] for ln in r.stdout.splitlines() if ln.startswith("FAIL")]
        return sorted({ln.split()[1] for ln in lines}), lines

    def agent(self, host: str, spec: dict, timeout: float = 120) -> dict:
        r = subprocess.run(["ip", "netns", "exec", self.ns(host), sys.executable, __file__, "agent", json.dumps(spec)],
                           capture_output=True, text=True, timeout=timeout)  # fmt: skip
        try:
            return json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"ok": False, "detail": (r.stderr or r.stdout).strip()[-500:]}

    def read_stream(self) -> list[dict]:
        """CIM_GRAPH's messages since the last read, kept for the whole run's checks."""
        nats = self.env_of("nats")
        r = self.agent("ops", {"kind": "stream", "host": "nats", "port": 4222, "user": "cim",
                               "password": nats["NATS_PASSWORD_CIM"], "stream": "CIM_GRAPH",
                               "first": self.stream_seen + 1})  # fmt: skip
        if not r.get("ok"):
            raise Failed(f"reading CIM_GRAPH: {r.get('detail')}")
        for m in r["messages"]:
            try:
                data = json.loads(m["data"])
            except ValueError:
                data = {}
            m["event_id"] = m["msg_id"] or data.get("event_id")
            m["tenant"] = data.get("tenant_id")
            m["markers"] = MARKER.findall(m["data"])
        self.stream_msgs += r["messages"]
        self.stream_seen = r["last_seq"]
        self.stream_cluster = (r.get("leader"), r.get("replicas"))
        return r["messages"]

    def outbox_drained(self, timeout: float = 60) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                if self.psql_admin("SELECT count(*) FROM graph.outbox") == "0":
                    return time.monotonic() - t0
            except Failed:
                pass
            time.sleep(0.3)
        raise Failed(f"graph.outbox not empty after {timeout:.0f}s")

    # --- faults -------------------------------------------------------------------------------

    def nft(self, host: str, rules: str) -> None:
        self.sh("ip", "netns", "exec", self.ns(host), "nft", "-f", "-", input=rules)

    def inject(self, kind: str, host: str) -> None:
        if kind in ("kill", "kill-nats") or (kind == "restart" and host == "redis"):
            p = self.proc(host)
            p.kill()
            p.wait()
        elif kind == "restart":  # postgres: a fast shutdown, as `pg_ctl stop -m fast`
            p = self.proc(host)
            p.send_signal(signal.SIGINT)
            p.wait(timeout=30)
        elif kind == "partition":
            self.nft(host, "table inet fault {\n"
                           " chain in {\n  type filter hook input priority -10; policy drop;\n  iifname \"lo\" accept\n }\n"
                           " chain out {\n  type filter hook output priority -10; policy drop;\n  oifname \"lo\" accept\n }\n"
                           "}\n")  # fmt: skip
        elif kind == "slow":
            for dev in self.hosts[host]:
                self.sh("ip", "netns", "exec", self.ns(host), "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                        "2mbit", "burst", "16kb", "latency", "300ms")  # fmt: skip
            self.nft(host, "table inet fault {\n chain out {\n  type filter hook output priority -10; policy accept;\n"
                           "  oifname != \"lo\" numgen random mod 100 < 5 drop\n }\n}\n")  # fmt: skip
        self.procs = [(n, p) for n, p in self.procs if p.poll() is None]

    def heal(self, kind: str, host: str) -> None:
        if kind in ("kill", "kill-nats", "restart"):
            self.respawn(host)
            self.wait_healthy(host, timeout=60)
        elif kind == "partition":
            self.sh("ip", "netns", "exec", self.ns(host), "nft", "delete", "table", "inet", "fault")
        elif kind == "slow":
            for dev in self.hosts[host]:
                self.sh("ip", "netns", "exec", self.ns(host), "tc", "qdisc", "del", "dev", dev, "root")
            self.sh("ip", "netns", "exec", self.ns(host), "nft", "delete", "table", "inet", "fault")

    def window(self, kind: str, host: str) -> dict:
        """One fault under load, then its checks: a row of the table."""
        tag = f"{len(self.rows):02d}-{kind}-{host}"
        d = self.tmp / "logs" / "load" / tag  # with the logs: kept on failure or CIM_REHEARSE_KEEP_LOGS
        d.mkdir(parents=True)
        os.chmod(d, 0o777)
        n_rest, n_grpc = self.tenants
        tenants = [uuid7() for _ in range(n_rest + n_grpc)]
        env = self.env_of("gateway")
        common = {"stop_cmds": str(d / "stop-cmds"), "stop_ws": str(d / "stop-ws")}
        rest = {**common, "kind": "rest", "lb": self.resolve("outside", "nginx"), "watchers": 2, "out": str(d / "rest.jsonl"),
                "tenants": [{"tenant": t, "token": self.token(env, t)} for t in tenants[:n_rest]]}  # fmt: skip
        grpc = {**common, "kind": "grpc", "grpcurl": self.tools["grpcurl"], "out": str(d / "grpc.jsonl"),
                "targets": [f"{g}:{self.ports['graph'][0]}" for g in self.replicas("graph")],
                "tenants": [{"tenant": t} for t in tenants[n_rest:]]}  # fmt: skip
        agents = [self.spawn(f"load-{tag}-rest", "outside", [sys.executable, __file__, "agent", json.dumps(rest)], {}),
                  self.spawn(f"load-{tag}-grpc", "ops", [sys.executable, __file__, "agent", json.dumps(grpc)], {})]
        files = [d / "rest.jsonl", d / "grpc.jsonl"]
        injected = False
        try:
            faults_check.wait_for(lambda: all(any(r["kind"] == "started" for r in faults_check.records(f))
                                              for f in files), 30, "the load agents never started")  # fmt: skip
            time.sleep(self.steady)
            t_fault = time.time()
            injected = True
            self.inject(kind, host)
            doctor: dict = {}
            dt = threading.Thread(target=lambda: doctor.update(zip(("fails", "lines"), self.doctor())))
            dt.start()
            time.sleep(self.hold)
            dt.join(timeout=45)
            injected = False
            self.heal(kind, host)
            t_heal = time.time()
            recovered = faults_check.wait_recovered(files, t_heal, 90)
            time.sleep(self.steady)
            (d / "stop-cmds").touch()
            faults_check.wait_for(lambda: sum(r["kind"] == "cmd-done" for f in files for r in faults_check.records(f))
                                  == len(tenants), 30, "the command loops did not stop")  # fmt: skip
            self.outbox_drained()
            fresh = self.read_stream()
            faults_check.wait_for(lambda: faults_check.watchers_caught_up(faults_check.records(files[0]),
                                                                          self.stream_msgs), 20, None)  # fmt: skip
        finally:
            if injected:  # the window failed with its fault in place: the next one needs it gone
                try:
                    self.heal(kind, host)
                except Failed as e:
                    log(f"healing {kind} {host} after a failed window: {e}")
            (d / "stop-cmds").touch()
            (d / "stop-ws").touch()
            for p in agents:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
        recs = [r for f in files for r in faults_check.records(f)]
        pg = self.pg_events(tenants)
        row = faults_check.row(kind, host, recs, pg, self.stream_msgs, t_fault, t_heal, recovered)
        row["doctor"] = doctor.get("fails", ["did not finish"])
        row["doctor_new"] = sorted(set(row["doctor"]) - set(self.doctor_baseline))
        row["doctor_lines"] = [ln for ln in doctor.get("lines", []) if ln.split()[1] in row["doctor_new"]][:4]
        want = DOCTOR_SHOULD_NAME.get(host if kind == "restart" else kind)
        row["doctor_named"] = None if want is None else bool(want & set(row["doctor_new"]))
        row["stream_messages"] = len(fresh)
        return row

    def pg_events(self, tenants: list[str]) -> list[tuple[str, str, str]]:
        """(event_id, tenant, marker or '-') of every graph event of these tenants."""
        ids = ", ".join(f"'{t}'" for t in tenants)
        out = self.psql_admin("SELECT event_id || ' ' || tenant_id || ' ' || coalesce(substring(payload::text from "
                              f"'cmd-[0-9a-f]{{32}}'), '-') FROM graph.events WHERE tenant_id IN ({ids})")  # fmt: skip
        return [tuple(ln.split()) for ln in out.splitlines() if ln.strip()]

    # --- the end: the whole stream, hash chains, projections against a replay -----------------

    def final_checks(self) -> None:
        def stream_once():
            counts = Counter(m["event_id"] for m in self.stream_msgs)
            dups = {e: n for e, n in counts.items() if n > 1}
            if dups:
                raise Failed(f"{len(dups)} event id(s) more than once in CIM_GRAPH: {list(dups.items())[:5]}")
            leader, replicas = self.stream_cluster
            return (f"{len(counts)} messages of CIM_GRAPH read, each event id once; leader {leader}, "
                    f"replicas {', '.join(replicas or [])}")

        self.check("the whole stream: no event twice", stream_once)

        def violations():
            # A grant the services lack shows only when a fault makes them use it (re-created
            # consumers after a NATS node's death): every node's log, the whole run.
            found = [f"{node}: {ln.strip()[:240]}" for node in NATS_NODES
                     for ln in (self.tmp / "logs" / f"{node}.log").read_text(errors="replace").splitlines()
                     if "Violation" in ln]  # fmt: skip
            if found:
                raise Failed(f"{len(found)} violation(s):\n" + "\n".join(found[:8]))
            return "no permission or authorization violation in any NATS node's log"

        self.check("no permission violation on any NATS node", violations)

        def verify():
            r = self.cim("verify", "--domain", "graph", timeout=120)
            if r.returncode != 0:
                raise Failed((r.stdout + r.stderr).strip()[-600:])
            return (r.stdout.strip().splitlines() or ["ok"])[-1]

        self.check("cim verify --domain graph: every hash chain holds", verify)

        def replay():
            tables = ("graphs", "nodes", "edges")
            sql = " || ' ' || ".join(f"(SELECT coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '-') || ':' || "
                                     f"count(*) FROM graph.{t} x)" for t in tables)  # fmt: skip
            before = self.psql_admin(f"SELECT {sql}")
            r = self.cim("replay", "--domain", "graph", timeout=180)
            if r.returncode != 0:
                raise Failed("cim replay: " + (r.stdout + r.stderr).strip()[-600:])
            after = self.psql_admin(f"SELECT {sql}")
            if before != after:
                raise Failed(f"projections (md5:rows of {', '.join(tables)}) before {before}, after the replay {after}")
            return f"graphs, nodes, edges identical after cim replay ({before.replace(' ', '; ')})"

        self.check("projections equal a replay from the events", replay)

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
            # What doctor fails before any fault, in two runs: a check that times out once on
            # this busy machine must not hide the fault it names later.
            first, lines = self.doctor()
            self.doctor_baseline = sorted(set(first) & set(self.doctor()[0]))
            lines = [ln for ln in lines if ln.split()[1] in self.doctor_baseline]
            log("cim doctor before any fault: " + ("; ".join(lines) or "every check passes"))
            for kind, host in FAULTS if self.heavy else BOUNDED:
                t0 = time.monotonic()
                try:
                    row = self.window(kind, host)
                except Exception as e:  # a window that crashed is a failed row, with why; the next runs
                    row = {"fault": kind, "host": host, "error": f"{type(e).__name__}: {e}" if not isinstance(e, Failed) else str(e)}
                row["window_s"] = round(time.monotonic() - t0, 1)
                self.rows.append(row)
                log(faults_check.describe(row))
            self.final_checks()
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
    args = ap.parse_args()
    f = Faults(json.loads(args.tools.read_text()), args.tmp, args.heavy)
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
