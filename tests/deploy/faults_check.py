"""The fault harness's checks (faults.py): one fault window's records, the events Postgres holds
and the stream's messages made into a row of the fault table; the table printed and written.

A command is identified by its marker (a graph's name or a node's property `cmd`; a document's
title, an agent's or a workflow definition's name), which every event it caused carries, so a
command applied twice shows as its marker twice, whatever the event ids. Lost: an acknowledged
command whose marker or event ids are missing from its domain's events table or from its
domain's stream. Duplicated: a marker more than once in either, or an event id more than once
in a stream. A websocket client has a gap when an event of its tenant in the stream after its
start position never reached it, a duplicate when one reached it twice.

Rate limits: one principal of a tenant with its own limit sends at a steady rate through nginx
(both gateways) from the fault's injection on; in each minute the gateways together may accept
the limit plus what the documented overshoot allows (limits::RateLimiter: the requests that fit in
two flush intervals, one interval more for a gateway killed with counts it had not flushed, and the limit once
per gateway in a minute Redis was lost in: each counts alone while Redis is away, and Redis
comes back empty), and must have refused some.

Webhooks: each window's REST tenants have a subscription to their graph events at the
receiver; every event id of their acknowledged graph commands must have reached it (by `ce-id`)
at least once. Deliveries are at least once, so a call repeated (a replica killed between its
call and recording it: the lease lapses and the call is made again) is counted, not failed.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

INTERNAL = re.compile(r"^500 |urn:cim:problem:internal|: (Internal|Unknown): ")
# A read older than an acknowledged write fails a run, whoever reads (the writer or another client
# of its tenant): a write through one gateway bumps the shared cache generation before its answer
# leaves, and every gateway checks it before a hit. So does a refusal that blames the server (500 / INTERNAL / UNKNOWN): a replica killed
# mid-call is UNAVAILABLE (503), which the client may retry.


# Pending in every window: the load on debug builds on two shared cores is slow enough for the
# latency rules' expressions (their `for:` of 10 minutes is never reached).
LOAD_ALERTS = {"CimGrpcLatencyHigh", "CimGatewayLatencyHigh"}


def records(path: Path) -> list[dict]:
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for ln in text.splitlines():
        try:
            out.append(json.loads(ln))
        except ValueError:
            pass  # a line being written
    return out


def wait_for(done, timeout: float, failure: str | None) -> bool:
    """Polls `done` until true; past the timeout raises with `failure`, or returns False."""
    from rehearse import Failed

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.3)
    if failure:
        raise Failed(failure)
    return False


def wait_recovered(files: list[Path], since: float, timeout: float) -> bool:
    """Every load channel working again after `since`: a command acknowledged that started
    after it on each, and every websocket client connected."""

    def ok() -> bool:
        recs = [r for f in files for r in records(f)]
        cmds = [r for r in recs if r["kind"] == "cmd"]
        for channel in {channel_of(r) for r in cmds}:
            if not any(channel_of(r) == channel and r["ok"] and r["t0"] >= since for r in cmds):
                return False
        last: dict[int, str] = {}
        for r in recs:
            if r["kind"] in ("ws-start", "ws-drop", "ws-error", "ws-resume"):
                last[r["client"]] = r["kind"]
        return all(k in ("ws-start", "ws-resume") for k in last.values())

    return wait_for(ok, timeout, None)


def domain_of(cmd: dict) -> str:
    return cmd.get("domain", "graph")


def channel_of(cmd: dict) -> str:
    """What a recovery is timed for: graph over REST or gRPC, each other domain (REST)."""
    return cmd["via"] if domain_of(cmd) == "graph" else domain_of(cmd)


def ws_clients(recs: list[dict]) -> dict[int, dict]:
    clients: dict[int, dict] = {}
    for r in recs:
        if r["kind"] == "ws-start":
            clients[r["client"]] = {"tenant": r["tenant"], "start": r["position"], "events": [], "drops": [], "resumes": []}
        elif r["kind"] == "ws":
            clients[r["client"]]["events"].append(r["event_id"])
        elif r["kind"] == "ws-drop":
            clients[r["client"]]["drops"].append(r["t"])
        elif r["kind"] == "ws-resume":
            clients[r["client"]]["resumes"].append(r["t"])
    return clients


def expected_of(client: dict, stream_msgs: list[dict]) -> set[str]:
    return {m["event_id"] for m in stream_msgs if m["tenant"] == client["tenant"] and m["seq"] > client["start"]}


def watchers_caught_up(recs: list[dict], stream_msgs: list[dict]) -> bool:
    return all(expected_of(c, stream_msgs) <= set(c["events"]) for c in ws_clients(recs).values())


def recovery(recs: list[dict], channel: str, t_fault: float) -> float | None:
    """Seconds from the fault until the first acknowledged command after the channel's last
    failure (0: nothing failed); None: it never succeeded again."""
    cmds = [r for r in recs if r["kind"] == "cmd" and channel_of(r) == channel and r["t"] >= t_fault]
    failed = [r["t"] for r in cmds if not r["ok"]]
    if not failed:
        return 0.0
    after = [r["t"] for r in cmds if r["ok"] and r["t"] > max(failed)]
    return round(min(after) - t_fault, 2) if after else None


def row(kind, host, recs, pg, streams, t_fault, t_heal, recovered) -> dict:
    """pg and streams: per domain, the (event_id, tenant, marker) of its events table and the
    messages of its stream; streams["graph"] feeds the websocket checks."""
    cmds = [r for r in recs if r["kind"] == "cmd"]
    tenants = {r["tenant"] for r in cmds}
    acked = [c for c in cmds if c["ok"]]
    lost, applied_unacked, dup_markers, dup_ids = [], [], set(), set()
    per_domain = {}
    for domain in sorted({domain_of(c) for c in cmds}):
        mine_cmds = [c for c in cmds if domain_of(c) == domain]
        pg_markers = Counter(m for _, _, m in pg.get(domain, []) if m != "-")
        pg_ids = Counter(e for e, _, _ in pg.get(domain, []))
        mine = [m for m in streams.get(domain, []) if m["tenant"] in tenants]
        st_markers = Counter(x for m in mine for x in set(m["markers"]))
        st_ids = Counter(m["event_id"] for m in mine)
        d_lost = [c for c in mine_cmds if c["ok"] and (pg_markers[c["marker"]] == 0 or st_markers[c["marker"]] == 0
                  or any(pg_ids[e] == 0 or st_ids[e] == 0 for e in c["event_ids"]))]  # fmt: skip
        d_dups = {m for m, n in pg_markers.items() if n > 1} | {m for m, n in st_markers.items() if n > 1}
        lost += d_lost
        dup_markers |= d_dups
        dup_ids |= {e for e, n in st_ids.items() if n > 1}
        applied_unacked += [c for c in mine_cmds if not c["ok"] and pg_markers[c["marker"]] > 0]
        per_domain[domain] = {"acknowledged": sum(c["ok"] for c in mine_cmds), "lost": len(d_lost),
                              "duplicated": len(d_dups)}  # fmt: skip
    stream_msgs = streams.get("graph", [])
    reads = [r for r in recs if r["kind"] == "read" and r["ok"] is not None]
    stale = [r for r in reads if not r["ok"]]
    clients = ws_clients(recs)
    ws = {"clients": len(clients), "events": 0, "gaps": 0, "duplicates": 0, "drops": 0}
    for c in clients.values():
        ws["events"] += len(c["events"])
        ws["gaps"] += len(expected_of(c, stream_msgs) - set(c["events"]))
        ws["duplicates"] += len(c["events"]) - len(set(c["events"]))
        ws["drops"] += len(c["drops"])
    rec = {ch: recovery(recs, ch, t_fault) for ch in sorted({channel_of(c) for c in cmds})}
    resumes = [t for c in clients.values() for t in c["resumes"] if t >= t_fault]
    rec["websocket"] = round(max(resumes) - t_fault, 2) if resumes else 0.0
    return {
        "fault": kind, "host": host,
        "acknowledged": len(acked), "acknowledged_rest": sum(c["via"] == "rest" for c in acked),
        "acknowledged_grpc": sum(c["via"] == "grpc" for c in acked), "failed": len(cmds) - len(acked),
        "domains": per_domain,
        "lost": len(lost), "duplicated": len(dup_markers | {f"event {e}" for e in dup_ids if not dup_markers}),
        "applied_unacknowledged": len(applied_unacked),
        # Refusals that blame the server (500 / INTERNAL / UNKNOWN) where a fault should answer
        # UNAVAILABLE: reported, not failed (issue 22 wants none).
        "internal": sum(not c["ok"] and bool(INTERNAL.search(c["detail"])) for c in cmds),
        "lost_detail": [{k: c[k] for k in ("via", "op", "marker", "event_ids", "tenant")} for c in lost[:5]],
        "duplicated_detail": sorted(dup_markers)[:5] + sorted(dup_ids)[:5],
        "reads": len(reads), "stale_reads": len(stale),
        "reads_by_other": sum(r.get("by") == "other" for r in reads),
        "stale_by_other": sum(r.get("by") == "other" for r in stale),
        "stale_detail": [{k: r.get(k) for k in ("by", "graph_id", "want", "got", "cache")} for r in stale[:5]],
        "websocket": ws, "recovery_s": rec,
        "recovered": recovered, "fault_s": round(t_heal - t_fault, 1),
        "failures": sorted({c["detail"][:160] for c in cmds if not c["ok"]})[:6],
    }  # fmt: skip


# The gateways' rate-limit flush interval (crates/gateway/src/limits.rs FLUSH_EVERY).
FLUSH_S = 0.1


def rate_limit(recs: list[dict], limit: int, rate: float, gateways: int, lost: dict[str, tuple[float, float]]) -> dict:
    """The prober's answers per minute against the documented bound. `lost`: per part of the
    fault that can cost counts ("gateway": a replica killed, "redis": its counts gone), the
    times it lasted (seen late: a flush after the heal still fails once)."""
    answers = [r for r in recs if r["kind"] == "limit"]
    minutes: dict[int, dict] = {}
    straddling = Counter()
    for r in answers:
        m0, m1 = int(r["t0"] // 60), int(r["t"] // 60)
        for m in range(m0, m1 + 1):  # a request the gateway counted in either minute: counted in both
            tally = minutes.setdefault(m, {"accepted": 0, "refused": 0, "other": Counter()})
            if r["status"] == 200:
                tally["accepted"] += 1
            elif r["status"] == 429:
                tally["refused"] += 1
            else:
                tally["other"][str(r["status"])] += 1
            if m1 != m0:
                straddling[m] += 1

    def overlaps(m: int, part: str) -> bool:
        start, end = lost.get(part, (None, None))
        return start is not None and start < (m + 1) * 60 and end >= m * 60

    out, held = [], bool(answers)
    for m, tally in sorted(minutes.items()):
        flushes = 2 + overlaps(m, "gateway")
        # Requests at `rate` that fit in `flushes` intervals: floor(T x rate) + 1 (both ends).
        bound = (gateways if overlaps(m, "redis") else 1) * limit + int(flushes * FLUSH_S * rate + 1e-9) + 1
        ok = tally["accepted"] <= bound
        held &= ok
        out.append({"minute": m, "accepted": tally["accepted"], "refused": tally["refused"], "bound": bound,
                    "other": dict(tally["other"]), "straddling": straddling[m], "ok": ok})  # fmt: skip
    refused = sum(t["refused"] for t in out)
    return {"limit": limit, "sent": len(answers), "refused": refused, "minutes": out, "held": held and refused > 0}


def webhook_expected(recs: list[dict], tenants: set[str]) -> set[str]:
    """The event ids of the acknowledged graph commands of these (subscribed) tenants."""
    return {e for r in recs if r["kind"] == "cmd" and r["ok"] and domain_of(r) == "graph" and r["tenant"] in tenants
            for e in r["event_ids"]}  # fmt: skip


def webhook(recs: list[dict], calls: list[dict], tenants: set[str], subscriptions: dict, wait_s: float) -> dict:
    """What the receiver got of these tenants' events (calls: {id: ce-id, tenant: ce-cimtenant,
    status, by: the replica that called}): delivered and missing of the expected event ids,
    duplicated = calls beyond the first per ce-id, other = ids of events not acknowledged to the
    load (applied, the answer lost), calls per replica."""
    want = webhook_expected(recs, tenants)
    mine = [c for c in calls if c["tenant"] in tenants]
    got = Counter(c["id"] for c in mine)
    missing = want - set(got)
    return {"subscriptions": len(subscriptions), "expected": len(want), "delivered": len(want & set(got)),
            "missing": len(missing), "duplicated": sum(n - 1 for n in got.values()), "calls": len(mine),
            "other": len(set(got) - want), "not_2xx": sum(not 200 <= c["status"] < 300 for c in mine),
            "by_replica": dict(sorted(Counter(str(c.get("by")) for c in mine).items())),
            "wait_s": round(wait_s, 1), "missing_detail": sorted(missing)[:5]}  # fmt: skip


def bad(row: dict) -> list[str]:
    if "error" in row:
        return [f"window failed: {row['error']}"]
    out = []
    for key in ("lost", "duplicated"):
        if row[key]:
            out.append(f"{row[key]} {key}")
    if row["internal"]:
        out.append(f"{row['internal']} refusals as internal errors")
    if row["stale_reads"]:
        out.append(f"{row['stale_reads']} of {row['reads']} reads older than an acknowledged write "
                   f"({row.get('stale_by_other', 0)} by another client than the writer)")  # fmt: skip
    for key in ("gaps", "duplicates"):
        if row["websocket"][key]:
            out.append(f"websocket {key}: {row['websocket'][key]}")
    if not row["recovered"]:
        out.append("the load did not recover within 90 s of the heal")
    if row.get("alert_named") is False:
        out.append(f"the alert expected while the fault lasted did not show: {', '.join(row['alert_expected'])} "
                   f"(seen: {', '.join(row['alerts']) or 'none'})")  # fmt: skip
    hook = row.get("webhook")
    if hook is not None and hook["missing"]:
        out.append(f"webhook: {hook['missing']} of {hook['expected']} acknowledged graph events never reached the "
                   f"receiver: {', '.join(hook['missing_detail'])}")  # fmt: skip
    if hook is not None and not hook["expected"]:
        out.append("webhook: no acknowledged graph command of a subscribed tenant, nothing to deliver")
    limited = row.get("rate_limit")
    if limited is not None and not limited["held"]:
        out.append(f"rate limit not held across the gateways: {limit_text(row)}")
    if "held_in_outbox" in row and not (row["held_in_outbox"] and row["acknowledged_while_full"]):
        out.append(f"a full store that was none: {row['acknowledged_while_full']} commands acknowledged while it "
                   f"lasted, {row['held_in_outbox']} events held in the outboxes")  # fmt: skip
    return out


def recovery_text(row: dict) -> str:
    r = max((v for v in row["recovery_s"].values() if v is not None), default=0.0)
    return f"{r:.1f}s" + ("" if None not in row["recovery_s"].values() else " (a channel never recovered)")


def describe(row: dict) -> str:
    if "error" in row:
        return f"{row['fault']} {row['host']}: ERROR {row['error']}"
    ws = row["websocket"]
    return (f"{row['fault']} {row['host']}: {row['acknowledged']} acknowledged ({row['failed']} refused, "
            f"{row['internal']} as internal), {row['stale_reads']} of {row['reads']} reads stale, "
            f"{row['lost']} lost, {row['duplicated']} duplicated; websocket {ws['events']} events to {ws['clients']} "
            f"clients, {ws['drops']} drops, {ws['gaps']} gaps, {ws['duplicates']} duplicates; recovery "
            f"{row['recovery_s']}; {webhook_text(row)}; alerts {row['alerts'] or 'none'}; "
            f"doctor failed {row['doctor_new'] or 'nothing new'}; {limit_text(row)}; window {row['window_s']}s"
            + (f"; while full {row['acknowledged_while_full']} acknowledged, {row['held_in_outbox']} events held in "
               "the outboxes" if "held_in_outbox" in row else ""))  # fmt: skip


def limit_text(row: dict) -> str:
    r = row.get("rate_limit")
    if r is None:
        return "rate limit not checked"
    per_minute = ", ".join(f"{m['accepted']} of bound {m['bound']}" + (" (OVER)" if not m["ok"] else "")
                           + (f", {m['straddling']} across the minute's end" if m["straddling"] else "")
                           + (f", other {m['other']}" if m["other"] else "") for m in r["minutes"])  # fmt: skip
    return f"rate limit {r['limit']}/min: {r['sent']} sent, {r['refused']} refused (429), accepted per minute: {per_minute or 'none'}"


def webhook_text(row: dict) -> str:
    h = row.get("webhook")
    if h is None:
        return "webhook not checked"
    return (f"webhook {h['delivered']} of {h['expected']} events delivered to {h['subscriptions']} subscriptions, "
            f"{h['missing']} missing, {h['duplicated']} calls repeated ({h['calls']} calls, {h['not_2xx']} not 2xx, "
            f"{h['other']} events of unacknowledged commands; by replica {h['by_replica']}), subscribed in "
            f"{h.get('subscribe_s', '?')}s, waited {h['wait_s']}s after the streams were read")  # fmt: skip


def table(rows: list[dict]) -> str:
    head = ["fault", "host", "acked (REST/gRPC)", "of them doc/agent/wf", "refused (internal)", "lost", "dup", "stale reads",
            "ws events/gaps/dups", "webhook delivered/missing/dup", "rate limit: accepted/bound per minute", "recovery", "alert", "doctor named"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['fault']} | {r['host']} | ERROR: {r['error'][:80]} |" + " |" * (len(head) - 3))
            continue
        ws = r["websocket"]
        named = {None: "n/a: " + (", ".join(r["doctor_new"]) or "nothing"), True: "yes: " + ", ".join(r["doctor_new"]),
                 False: "NO: " + (", ".join(r["doctor_new"]) or "nothing")}[r["doctor_named"]]  # fmt: skip
        others = "/".join(str(r["domains"].get(d, {}).get("acknowledged", 0)) for d in ("document", "agent", "workflow"))
        alert = {None: "n/a", True: "yes", False: "NO"}[r.get("alert_named")]
        if r.get("alert_expected"):
            alert += ": " + ", ".join(r["alert_expected"])
        else:  # what did show, but the latency alerts every window's load raises on debug builds
            seen = sorted({a.split(" (")[0] for a in r.get("alerts", [])} - LOAD_ALERTS)
            alert += (" (seen: " + ", ".join(seen) + ")") if seen else ""
        h = r.get("webhook")
        hook = f"{h['delivered']}/{h['missing']}/{h['duplicated']}" if h else "-"
        rl = r.get("rate_limit")
        limited = " ".join(f"{m['accepted']}/{m['bound']}" for m in rl["minutes"]) if rl else "-"
        lines.append(f"| {r['fault']} | {r['host']} | {r['acknowledged']} ({r['acknowledged_rest']}/"
                     f"{r['acknowledged_grpc']}) | {others} | {r['failed']} ({r['internal']}) | {r['lost']} | {r['duplicated']} | {r['stale_reads']}/{r['reads']} | "
                     f"{ws['events']}/{ws['gaps']}/{ws['duplicates']} | {hook} | {limited} | {recovery_text(r)} | {alert} | {named} |")  # fmt: skip
    return "\n".join(lines)


def report(harness, total: float) -> int:
    rows = harness.rows
    problems = [f"{r['fault']} {r['host']}: {p}" for r in rows for p in bad(r)]
    problems += [f"{name}: {detail}" for name, ok, _, detail in harness.results if not ok]
    print("\n" + table(rows) + "\n")
    for name, ok, dt, _ in harness.results:
        print(f"  {'ok  ' if ok else 'FAIL'}  {dt:5.1f}s  {name}")
    doc = {"mode": "heavy" if harness.heavy else "bounded", "total_s": round(total, 1), "rows": rows,
           "checks": [{"name": n, "ok": ok, "detail": d} for n, ok, _, d in harness.results],
           "problems": problems}  # fmt: skip
    try:
        Path(harness.out).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"\nfaults: the table as JSON in {harness.out}")
    except OSError as e:
        print(f"\nfaults: cannot write {harness.out}: {e}")
    for p in problems:
        print(f"faults: PROBLEM {p}")
    print(f"faults: {len(rows)} faults, {len(problems)} problem(s) (total {total:.1f}s)")
    return 1 if problems or not rows else 0
