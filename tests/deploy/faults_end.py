"""The fault harness's checks at the end of a run (faults.py): every stream read has each event id
once and holds every event Postgres has, no NATS server logged a permission violation, every
domain's hash chains hold, and the graph projections equal a replay."""

from __future__ import annotations

from collections import Counter

from faults_hosts import NATS_NODES, STORES
from rehearse import Failed


def final_checks(h) -> None:
    def read_to_the_end():
        # The windows read the streams as they went; one that failed before its read left its
        # events unread, and they would count as never relayed. Read once more to the end.
        drained = h.outbox_drained()
        fresh = h.read_streams()
        return f"outboxes drained in {drained:.1f}s; {sum(len(m) for m in fresh.values())} messages more read"

    h.check("the streams read to their end", read_to_the_end)

    def stream_once():
        said = []
        for domain, msgs in h.stream_msgs.items():
            counts = Counter(m["event_id"] for m in msgs)
            dups = {e: n for e, n in counts.items() if n > 1}
            name = f"CIM_{domain.upper()}"
            if dups:
                raise Failed(f"{len(dups)} event id(s) more than once in {name}: {list(dups.items())[:5]}")
            leader, replicas = h.stream_cluster.get(domain, (None, None))
            said.append(f"{name} {len(counts)} (leader {leader}, replicas {', '.join(replicas or [])})")
        return "messages read, each event id once: " + "; ".join(said)

    h.check("the whole streams: no event twice", stream_once)

    def every_event_relayed():
        # Beyond the windows' acknowledged commands: whatever else the services wrote.
        said = []
        for domain, msgs in h.stream_msgs.items():
            in_pg = set(h.psql_admin(f"SELECT event_id FROM {domain}.events").split())
            missing = in_pg - {m["event_id"] for m in msgs}
            if missing:
                raise Failed(f"{len(missing)} of {len(in_pg)} {domain} events never in CIM_{domain.upper()}: "
                             f"{sorted(missing)[:5]}")  # fmt: skip
            said.append(f"{domain} {len(in_pg)}")
        return "every event in Postgres read from its stream: " + ", ".join(said)

    h.check("every event of every domain relayed to its stream", every_event_relayed)

    def violations():
        # A grant the services lack shows only when a fault makes them use it (re-created
        # consumers after a NATS node's death): every node's log, the whole run.
        found = [f"{node}: {ln.strip()[:240]}" for node in NATS_NODES
                 for ln in (h.tmp / "logs" / f"{node}.log").read_text(errors="replace").splitlines()
                 if "Violation" in ln]  # fmt: skip
        if found:
            raise Failed(f"{len(found)} violation(s):\n" + "\n".join(found[:8]))
        return "no permission or authorization violation in any NATS node's log"

    h.check("no permission violation on any NATS node", violations)

    def verify():
        said = []
        for domain in STORES:
            r = h.cim("verify", "--domain", domain, timeout=120)
            if r.returncode != 0:
                raise Failed(f"{domain}: " + (r.stdout + r.stderr).strip()[-600:])
            said.append(f"{domain}: " + (r.stdout.strip().splitlines() or ["ok"])[-1])
        return "; ".join(said)

    h.check("cim verify of every domain: every hash chain holds", verify)

    def replay():
        tables = ("graphs", "nodes", "edges")
        sql = " || ' ' || ".join(f"(SELECT coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '-') || ':' || "
                                 f"count(*) FROM graph.{t} x)" for t in tables)  # fmt: skip
        before = h.psql_admin(f"SELECT {sql}")
        r = h.cim("replay", "--domain", "graph", timeout=180)
        if r.returncode != 0:
            raise Failed("cim replay: " + (r.stdout + r.stderr).strip()[-600:])
        after = h.psql_admin(f"SELECT {sql}")
        if before != after:
            raise Failed(f"projections (md5:rows of {', '.join(tables)}) before {before}, after the replay {after}")
        return f"graphs, nodes, edges identical after cim replay ({before.replace(' ', '; ')})"

    h.check("projections equal a replay from the events", replay)
