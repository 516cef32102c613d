"""The fault harness's faults (faults.py): each kind injected and healed on the hosts of
faults_hosts.py, the operators' tools run from the `ops` host (`cim doctor`, the JetStream
requests of faults_load.py), and what should notice each fault while it lasts: the alerts
(Prometheus' rules, read from Prometheus itself) and `cim doctor`'s checks."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

from faults_hosts import NATS_NODES, STORES, ReplicatedHosts
from rehearse import Failed

# What runs an agent (faults_load.py) inside a namespace.
AGENT = str(Path(__file__).with_name("faults.py"))
# What `cim doctor` should name while the fault lasts (any of its checks of that store); absent:
# outside what it checks (it does not look at the services themselves).
NATS_CHECKS = {"nats", "cluster", "stream", "consumer", "dlq"}
# The alerts (monitoring/prometheus/rules) that should be pending or firing while the fault
# lasts: the services' own and the infrastructure's (through the exporters run here); one about a
# host (a replica, a NATS node) must name that host. Absent: no rule sees it within a hold of
# seconds (a full store shows as CimOutboxStale only after its events wait 60 s; a slow network
# only as latency, which every window's load on debug builds already raises).
ALERT_SHOULD_NAME = {"kill": {"CimServiceDown"}, "postgres": {"CimPostgresUnreachable", "CimPostgresDown"},
                     "redis": {"CimRedisDown"}, "kill-nats": {"CimNatsDown"}, "partition": {"CimNatsDown"}}  # fmt: skip
# The alerts whose instance is the host the fault hit.
PER_HOST = {"CimServiceDown", "CimNatsDown"}
# A fault whose kind ends so ("kill-held") is that fault held past its alert's `for:` (1 min):
# the alert must then be firing, not only pending. In --heavy only: it costs minutes.
HELD = "-held"
HELD_S = 80.0
DOCTOR_SHOULD_NAME = {"kill-nats": NATS_CHECKS, "partition": NATS_CHECKS, "postgres": {"postgres"}, "redis": {"redis"},
                      "store-full": {"stream"}}  # fmt: skip


def base(kind: str) -> str:
    """The fault a held one is ("kill-held" is a kill)."""
    return kind.removesuffix(HELD)


def subject(kind: str, host: str) -> str:
    """What a fault is looked up by in ALERT_SHOULD_NAME and DOCTOR_SHOULD_NAME: a restart by
    the store restarted, any other fault by its kind."""
    return host if base(kind) == "restart" else base(kind)


def alert_host(where: str) -> str:
    """The host an alert's instance names: `graph2:9101`, or a probe's `http://nats2:8222/...`."""
    return (urllib.parse.urlsplit(where).hostname or "") if "://" in where else where.split(":")[0]


def alert_key(labels: dict, state: str) -> tuple[str, str, str]:
    """(alert, state, where): its instance, else its service or app."""
    where = labels.get("instance") or labels.get("service") or labels.get("app") or ""
    return labels.get("alertname", "?"), state, where


def fail_key(line: str) -> str:
    """A doctor FAIL line's check and what it failed on ("stream CIM_WEBHOOK:")."""
    return " ".join(line.split()[1:3])


class Injection(ReplicatedHosts):
    """The hosts with the faults and the operators' tools on them."""

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
            return ["timeout"], ["FAIL  timeout   cim doctor: no answer within 40 s"]
        lines = [ln.strip()[:160] for ln in r.stdout.splitlines() if ln.startswith("FAIL")]
        return sorted({ln.split()[1] for ln in lines}), lines

    def agent(self, host: str, spec: dict, timeout: float = 120) -> dict:
        r = subprocess.run(["ip", "netns", "exec", self.ns(host), sys.executable, AGENT, "agent", json.dumps(spec)],
                           capture_output=True, text=True, timeout=timeout)  # fmt: skip
        try:
            return json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"ok": False, "detail": (r.stderr or r.stdout).strip()[-500:]}

    # --- faults -------------------------------------------------------------------------------

    def nft(self, host: str, rules: str) -> None:
        self.sh("ip", "netns", "exec", self.ns(host), "nft", "-f", "-", input=rules)

    def stream_limit(self, stream: str, config: dict | None = None) -> dict:
        """A stream made full (config None), or its config put back; answers the one replaced."""
        r = self.agent("ops", {"kind": "stream-limit", "host": "nats", "port": 4222, "user": "cim",
                               "password": self.env_of("nats")["NATS_PASSWORD_CIM"], "stream": stream,
                               "config": config})  # fmt: skip
        if not r.get("ok"):
            raise Failed(f"{stream}: {r.get('detail')}")
        return r["replaced"]

    def inject(self, kind: str, host: str) -> None:
        kind = base(kind)
        if kind == "store-full":
            self.full_streams = {}
            for domain in STORES:
                self.full_streams[f"CIM_{domain.upper()}"] = self.stream_limit(f"CIM_{domain.upper()}")
        elif kind in ("kill", "kill-nats") or (kind == "restart" and host == "redis"):
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
        kind = base(kind)
        if kind == "store-full":
            for stream, config in self.full_streams.items():
                self.stream_limit(stream, config)
        elif kind in ("kill", "kill-nats", "restart"):
            self.respawn(host)
            self.wait_healthy(host, timeout=60)
        elif kind == "partition":
            self.sh("ip", "netns", "exec", self.ns(host), "nft", "delete", "table", "inet", "fault")
        elif kind == "slow":
            for dev in self.hosts[host]:
                self.sh("ip", "netns", "exec", self.ns(host), "tc", "qdisc", "del", "dev", dev, "root")
            self.sh("ip", "netns", "exec", self.ns(host), "nft", "delete", "table", "inet", "fault")

    def alerts(self) -> set[tuple[str, str, str]]:
        """(alert, state, app/instance) of every alert Prometheus has pending or firing."""
        r = self.probe("prometheus", {"kind": "http", "url": "http://127.0.0.1:9090/api/v1/alerts", "timeout": 3},
                       timeout=10)  # fmt: skip
        found = ((r.get("body") or {}).get("data") or {}).get("alerts") or []
        return {alert_key(a["labels"], a.get("state", "?")) for a in found}

    def alerts_between(self, start: float, end: float) -> set[tuple[str, str, str]]:
        """As `alerts`, for every rule evaluation from `start` to `end` (Prometheus' own ALERTS
        series), so no look can come too late on the busy machine (one once-a-second look through
        a probe missed a 6 s CimServiceDown)."""
        query = f"max_over_time(ALERTS[{max(1, math.ceil(end - start))}s])"
        url = "http://127.0.0.1:9090/api/v1/query?" + urllib.parse.urlencode({"query": query, "time": f"{end:.3f}"})
        for _ in range(3):
            r = self.probe("prometheus", {"kind": "http", "url": url, "timeout": 5}, timeout=15)
            body = r.get("body") or {}
            if body.get("status") == "success":
                return {alert_key(m["metric"], m["metric"].get("alertstate", "?")) for m in body["data"]["result"]}
            time.sleep(1)
        raise Failed(f"Prometheus answered no ALERTS for the window: {r}")

    def outbox_held(self) -> int:
        return int(self.psql_admin("SELECT " + " + ".join(f"(SELECT count(*) FROM {d}.outbox)" for d in STORES)))
