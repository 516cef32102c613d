#!/usr/bin/env python3
"""Alerts reach a person: an induced fault, through a real Prometheus and Alertmanager, to a webhook.

usage: alerts.py --cim BIN --prometheus BIN --alertmanager BIN

Starts, each private to this run (free ports only; the shared servers are never touched): a NATS
server with JetStream and its own store directory, a throwaway Postgres database, `cim serve
--services graph,websocket` with its own subject prefix, the webhook receiver of
examples/alert-webhook/receiver.py (an HTTP server in this process), an Alertmanager and a
Prometheus. Their configurations are rendered from the shipped ones with only what a test must
change:

- Prometheus: monitoring/prometheus/prometheus.yml's `alerting` and `external_labels` shape, the
  repository's rule files as they are, scraping the monolith's admin listeners every second and
  evaluating every second; alerts go to this run's Alertmanager.
- Alertmanager: monitoring/alertmanager/alertmanager.yml's routes and inhibition rules as they
  are; every receiver's webhook URL replaced by this run's receiver, and group_wait and
  group_interval of every route set to 1 s (the shipped 30 s / 5 m would make a test wait minutes).

Then:
1. Healthy: every target up, no CIM alert notified.
2. NATS is stopped (SIGTERM to this run's server). CimNatsUnreachable, CIM's real rule on
   cim_dependency_up, must reach the webhook through the critical route (receiver
   cim-webhook-critical) for the services that lost NATS, with its runbook_url, no earlier than its
   `for:` (1 m) after the stop and no later than `for:` + evaluation, scrape, the services' 2 s
   readiness refresh and Alertmanager's group_wait, plus SLACK_SECONDS. Meanwhile WRITES graphs
   are created through the graph service's gRPC API: acknowledged (Postgres commits them), their
   events wait in the outbox.
3. Inhibition: while it fires, the symptoms it causes (CimServiceNotReady, CimOutboxStale,
   CimConsumerLagHigh) are suppressed by Alertmanager. Those rules need 2 to 3 minutes of their
   own to fire, so they are posted to Alertmanager's API as Prometheus would post them (same
   labels, deployment included); each must be reported suppressed by CimNatsUnreachable and never
   reach the webhook, while the same symptom from another deployment (the control) does.
4. NATS is started again on the same port and store: the services reconnect, the webhook must
   receive the resolved notification (for every alert that fired) within RESOLVE_SECONDS, and the
   graph stream must hold the events acknowledged during the outage (no acknowledged event lost).

Exits 1 naming what did not happen; every process and the database are removed on any exit.
"""

from __future__ import annotations

import argparse
import copy
import json
import secrets
import shutil
import subprocess
import signal
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import live_metrics  # noqa: E402  (processes, the database, the monolith: shared with the live metrics check)
from live_metrics import free_port, http, port_open, wait_for  # noqa: E402

ROOT = live_metrics.ROOT
sys.path.insert(0, str(ROOT / "examples/alert-webhook"))
import receiver  # noqa: E402  (the shipped webhook receiver example)

ALERT = "CimNatsUnreachable"
SYMPTOMS = ["CimServiceNotReady", "CimOutboxStale", "CimConsumerLagHigh"]
DEPLOYMENT = "alert-check"
# Beyond for: + evaluation: the services refresh cim_dependency_up every 2 s, a scrape and an
# evaluation each 1 s, Alertmanager's group_wait 1 s, and a loaded 2-core machine.
SLACK_SECONDS = 20
WRITES = 3  # commands acknowledged while NATS is down
RESOLVE_SECONDS = 30
START = time.monotonic()
LOG = threading.Lock()  # the webhook's threads log too


def log(msg: str) -> None:
    with LOG:
        print(f"alerts [{time.monotonic() - START:5.1f}s] {msg}", flush=True)


def rule(name: str) -> dict:
    for path in sorted((ROOT / "monitoring/prometheus/rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for r in group["rules"]:
                if r.get("alert") == name:
                    return r
    raise SystemExit(f"alerts: no rule {name} in monitoring/prometheus/rules")


def duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]]


class Inbox:
    """What the webhook received, with arrival times."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[float, dict]] = []

    def __call__(self, notification: dict) -> None:
        with self.lock:
            self.items.append((time.monotonic(), notification))
        for line in receiver.describe(notification):
            log(f"webhook ({notification.get('receiver')}): {line}")

    def alerts(self, status: str | None = None) -> list[tuple[float, str, dict]]:
        """(arrival, receiver, alert) for every alert of every notification."""
        with self.lock:
            return [(t, n.get("receiver"), a) for t, n in self.items for a in n.get("alerts", [])
                    if status is None or a.get("status") == status]  # fmt: skip


class AlertRun(live_metrics.Run):
    def start_nats_on(self, port: int) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        self.nats_port = port
        self.nats_monitor = getattr(self, "nats_monitor", None) or free_port()
        self.nats = self.spawn("nats", [binary, "-a", "127.0.0.1", "-p", str(port), "-m", str(self.nats_monitor),
                                        "-js", "-sd", str(self.tmp / "js")])  # fmt: skip
        wait_for(lambda: port_open(port), 10, "NATS", lambda: self.alive("nats", self.nats))

    def stream_messages(self, stream: str) -> int:
        """Messages in a JetStream stream, from the server's monitoring endpoint."""
        jsz = http("GET", f"http://127.0.0.1:{self.nats_monitor}/jsz?streams=true")[1]
        return sum(d["state"]["messages"] for acc in jsz.get("account_details") or []
                   for d in acc.get("stream_detail") or [] if d["name"] == stream)  # fmt: skip

    def create_graphs(self, grpcurl: str, n: int) -> list[str]:
        """n graphs created through the graph service's gRPC API; the ids it acknowledged."""
        tenant = "0190f1b2-2222-7000-8000-" + secrets.token_hex(6)
        ids = []
        for i in range(n):
            r = subprocess.run(
                [grpcurl, "-plaintext", "-max-time", "10", "-H", f"x-cim-tenant: {tenant}", "-H", "x-cim-actor: alerts",
                 "-d", json.dumps({"name": f"written while NATS is down {i}"}), self.env["CIM_GRAPH_ADDR"],
                 "cim.graph.v1.GraphService/CreateGraph"],
                capture_output=True, text=True, timeout=20,
            )  # fmt: skip
            if r.returncode != 0:
                raise SystemExit(f"alerts: CreateGraph while NATS is down: {(r.stderr or r.stdout).strip()[-400:]}")
            ids.append(json.loads(r.stdout)["graphId"])  # grpcurl prints protobuf JSON names
        return ids

    def stop_nats(self) -> None:
        self.nats.terminate()
        self.nats.wait(timeout=10)

    def start_alertmanager(self, webhook: str) -> str:
        cfg = yaml.safe_load((ROOT / "monitoring/alertmanager/alertmanager.yml").read_text())

        def short(route: dict) -> None:
            route["group_wait"], route["group_interval"] = "1s", "1s"
            for r in route.get("routes") or []:
                short(r)

        short(cfg["route"])
        for rcv in cfg["receivers"]:
            for hook in rcv.get("webhook_configs") or []:
                hook["url"] = f"{webhook}?receiver={rcv['name']}"
        (self.tmp / "alertmanager.yml").write_text(yaml.safe_dump(cfg))
        port = free_port()
        p = self.spawn("alertmanager", [
            self.args.alertmanager,
            f"--config.file={self.tmp / 'alertmanager.yml'}",
            f"--storage.path={self.tmp / 'am'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no gossip port (it would be a fixed one)
            "--log.level=warn",
        ])  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: port_open(port) and http("GET", f"{url}/-/ready")[0] == 200, 30, "Alertmanager",
                 lambda: self.alive("alertmanager", p))  # fmt: skip
        self.am = url
        return url

    def start_prometheus_alerting(self, admins: dict[str, str], am: str) -> str:
        shipped = yaml.safe_load((ROOT / "monitoring/prometheus/prometheus.yml").read_text())
        alerting = copy.deepcopy(shipped["alerting"])
        alerting["alertmanagers"][0]["static_configs"] = [{"targets": [am.removeprefix("http://")]}]
        port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s",
                       "external_labels": {"deployment": DEPLOYMENT}},
            "rule_files": [str(p) for p in sorted((ROOT / "monitoring/prometheus/rules").glob("*.yml"))],
            "alerting": alerting,
            # job and app labels as in monitoring/prometheus/prometheus.yml, which the rules select.
            "scrape_configs": [{"job_name": "cim", "static_configs": [
                {"targets": [a], "labels": {"app": s}} for s, a in sorted(admins.items())]}],
        }  # fmt: skip
        (self.tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        p = self.spawn("prometheus", [
            self.args.prometheus,
            f"--config.file={self.tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ])  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: port_open(port) and http("GET", f"{url}/-/ready")[0] == 200, 30, "Prometheus",
                 lambda: self.alive("prometheus", p))  # fmt: skip

        def ready() -> bool:
            targets = http("GET", f"{url}/api/v1/targets")[1]["data"]["activeTargets"]
            ams = http("GET", f"{url}/api/v1/alertmanagers")[1]["data"]["activeAlertmanagers"]
            return len(targets) == len(admins) and all(t["health"] == "up" for t in targets) and len(ams) == 1

        wait_for(ready, 20, "every target up and the Alertmanager discovered")
        self.prom = url
        return url


def post_symptoms(am: str, deployment: str, services: list[str]) -> None:
    """The symptom alerts as Prometheus posts them (API v2), one per service, lasting 5 minutes."""
    now = time.time()
    body = [{"labels": {"alertname": name, "severity": rule(name)["labels"]["severity"], "deployment": deployment,
                        "job": "cim", "service": s},
             "annotations": {"summary": f"{name} for {s} (posted by tests/deploy/alerts.py)"},
             "startsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
             "endsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 300))}
            for name in SYMPTOMS for s in services]  # fmt: skip
    status, answer = http("POST", f"{am}/api/v2/alerts", body)
    if status != 200:
        raise SystemExit(f"alerts: Alertmanager refused the symptom alerts: {status} {answer}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cim", required=True)
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--alertmanager", required=True)
    args = ap.parse_args()

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)

    nats_rule = rule(ALERT)
    hold = duration(nats_rule["for"])
    failures: list[str] = []
    grpcurl = live_metrics.find_grpcurl()
    run = AlertRun(args)
    inbox = Inbox()
    server, webhook = receiver.serve_in_background(inbox)
    try:
        run.start_nats_on(free_port())
        db = run.create_database()
        run.cim_env(db, f"nats://127.0.0.1:{run.nats_port}", "redis://127.0.0.1:1")
        services = ["graph", "websocket"]
        admins = run.start_cim(",".join(services))
        log(f"cim serve --services {','.join(services)}: " + ", ".join(f"{s} admin {a}" for s, a in sorted(admins.items()))
            + f"; NATS :{run.nats_port}, database {run.db_name}, prefix {run.env['CIM_SUBJECT_PREFIX']}")  # fmt: skip
        am = run.start_alertmanager(webhook)
        prom = run.start_prometheus_alerting(admins, am)
        log(f"prometheus {prom} (scrape and evaluate every 1s) → alertmanager {am} → webhook {webhook}")

        # 1. Healthy: the rule evaluates to nothing; nothing of CIM's is notified meanwhile.
        query = http("GET", f"{prom}/api/v1/query?query=" + urllib.parse.quote(nats_rule["expr"]))[1]
        if query["data"]["result"]:
            failures.append(f"healthy, yet {nats_rule['expr']} returns {query['data']['result']}")
        deps = http("GET", f"{prom}/api/v1/query?query=cim_dependency_up")[1]["data"]["result"]
        log("healthy: " + ", ".join(f"{r['metric']['service']}→{r['metric']['dependency']}={r['value'][1]}"
                                    for r in deps))  # fmt: skip
        if not any(r["metric"].get("dependency") == "nats" for r in deps):
            failures.append("cim_dependency_up{dependency=\"nats\"} is not exported")

        # 2. The fault.
        run.stop_nats()
        stopped = time.monotonic()
        log(f"NATS stopped; {ALERT} (for: {nats_rule['for']}) must reach the webhook within "
            f"{hold + SLACK_SECONDS:.0f}s")
        deadline = stopped + hold + SLACK_SECONDS
        # Commands keep being acknowledged (Postgres commits them): their events wait in the outbox.
        stream = run.env["CIM_SUBJECT_PREFIX"].replace("-", "_").replace(".", "_").upper() + "_GRAPH"
        written = run.create_graphs(grpcurl, WRITES)
        log(f"{len(written)} graphs created while NATS is down (acknowledged; their events wait in the outbox)")

        def fired() -> list[tuple[float, str, dict]]:
            return [a for a in inbox.alerts("firing") if a[2]["labels"].get("alertname") == ALERT]

        def nats_services() -> set[str]:
            return {a["labels"].get("service") for _, _, a in fired()}

        def key(a: dict) -> tuple[str, str]:
            # The monolith's admin listeners each export the whole process' metrics: one alert
            # per service and scrape target.
            return a["labels"].get("service"), a["labels"].get("instance")

        while time.monotonic() < deadline and nats_services() != set(services):
            run.alive("cim", next(p for n, p in run.procs if n == "cim"))
            time.sleep(0.5)
        got = fired()
        if not got:
            failures.append(f"{ALERT} did not reach the webhook within {hold + SLACK_SECONDS:.0f}s of stopping NATS")
        else:
            first = min(t for t, _, _ in got) - stopped
            log(f"{ALERT} reached the webhook {first:.1f}s after NATS stopped, for {sorted(nats_services())}")
            if first < hold:
                failures.append(f"{ALERT} arrived {first:.1f}s after the fault, before its for: {nats_rule['for']}")
            if nats_services() != set(services):
                failures.append(f"{ALERT} fired for {sorted(nats_services())}, not for every service {services}")
            for _, rcv, a in got:
                if rcv != "cim-webhook-critical":
                    failures.append(f"{ALERT} went to receiver {rcv}, not cim-webhook-critical (severity critical)")
                want = f"docs/runbooks/{ALERT}.md"
                if a["annotations"].get("runbook_url") != want or not (ROOT / want).is_file():
                    failures.append(f"{ALERT} carries runbook_url {a['annotations'].get('runbook_url')!r}, not {want}")
                if a["labels"].get("deployment") != DEPLOYMENT:
                    failures.append(f"{ALERT} lacks the deployment label inhibition matches on: {a['labels']}")

        # 3. Inhibition by the shipped rules, while the cause fires.
        if got:
            post_symptoms(am, DEPLOYMENT, services)
            post_symptoms(am, "elsewhere", services[:1])  # the control: another deployment's symptoms

            def states() -> dict[tuple[str, str], dict]:
                alerts = http("GET", f"{am}/api/v2/alerts")[1]
                return {(a["labels"]["alertname"], a["labels"]["deployment"]): a["status"] for a in alerts
                        if a["labels"]["alertname"] in SYMPTOMS}  # fmt: skip

            wait_for(lambda: len(states()) == len(SYMPTOMS) * 2, 10, "the posted symptom alerts in Alertmanager")
            time.sleep(3)  # several group intervals: anything not suppressed has been sent by now
            st = states()
            for name in SYMPTOMS:
                s = st[(name, DEPLOYMENT)]
                if s["state"] != "suppressed" or not s.get("inhibitedBy"):
                    failures.append(f"{name} is {s['state']} while {ALERT} fires, not inhibited: {s}")
                if st[(name, "elsewhere")]["state"] != "active":
                    failures.append(f"{name} of another deployment is {st[(name, 'elsewhere')]}, not active (control)")
            sent = {(a["labels"]["alertname"], a["labels"].get("deployment")) for _, _, a in inbox.alerts()}
            for name in SYMPTOMS:
                if (name, DEPLOYMENT) in sent:
                    failures.append(f"{name} reached the webhook although {ALERT} inhibits it")
                if (name, "elsewhere") not in sent:
                    failures.append(f"{name} of another deployment did not reach the webhook (the control)")
            log(f"inhibition: {', '.join(SYMPTOMS)} suppressed by {ALERT}; the same from another deployment delivered")

        # 4. Recovery.
        run.start_nats_on(run.nats_port)
        back = time.monotonic()
        log(f"NATS started again on :{run.nats_port}; the resolved notification must arrive within {RESOLVE_SECONDS}s")

        def resolved() -> set[tuple[str, str]]:
            return {key(a) for t, _, a in inbox.alerts("resolved")
                    if a["labels"].get("alertname") == ALERT and t >= back}  # fmt: skip

        firing = {key(a) for _, _, a in fired()}
        while time.monotonic() < back + RESOLVE_SECONDS and resolved() != firing:
            time.sleep(0.5)
        # No acknowledged event is lost: the relay publishes the outbox when NATS is back.
        published = 0
        until = time.monotonic() + RESOLVE_SECONDS
        while time.monotonic() < until and (published := run.stream_messages(stream)) < len(written):
            time.sleep(0.5)
        if published < len(written):
            failures.append(f"{stream} holds {published} events after NATS came back, not the {len(written)} "
                            "acknowledged while it was down")  # fmt: skip
        else:
            log(f"{stream}: the {published} events acknowledged during the outage published after it")
        if got and resolved() != firing:
            failures.append(f"{ALERT} resolved for {sorted(resolved())} within {RESOLVE_SECONDS}s, "
                            f"not for every one that fired: {sorted(firing)}")  # fmt: skip
        elif got:
            last = max(t for t, _, a in inbox.alerts("resolved") if a["labels"].get("alertname") == ALERT) - back
            log(f"{ALERT} resolved at the webhook {last:.1f}s after NATS came back")

        for name, p in run.procs:
            if p.poll() is not None and name != "nats":
                failures.append(f"{name} exited during the check ({p.returncode}):\n{run.tail(name)}")
        if failures:
            for f in failures:
                print(f"FAIL: {f}", flush=True)
            print(f"alerts: {len(failures)} failure(s); cim's output:\n" + "\n".join(run.cim_out[-30:]), flush=True)
            print(f"alertmanager's log:\n{run.tail('alertmanager')}\nprometheus' log:\n{run.tail('prometheus')}")
            return 1
        log(f"OK: NATS stopped → {ALERT} at the webhook (critical route, runbook attached), symptoms inhibited, "
            "resolved after recovery")  # fmt: skip
        return 0
    finally:
        server.shutdown()
        run.close()


if __name__ == "__main__":
    sys.exit(main())
