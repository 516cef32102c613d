"""The infrastructure exporters: one table of what each is, where it runs and which of its metrics
the dashboards and alert rules may use. Read by consistency.py (the deployment files and the
metric names of monitoring/) and live_metrics.py (which exporters it runs for real).

A Prometheus job per exporter, named by its key, in monitoring/prometheus/prometheus.yml (compose:
the target `<host>:<port>`) and prometheus-k8s.yml (the same host as a DNS name). Rules and panels
may use only the metrics listed here from an exporter (a typo is a failure, not an empty panel),
and scripts/check-live-metrics.sh proves every listed metric of a `live` exporter exists on a real
one. The others have no binary on this machine; their metric names were taken from the exporter's
own documentation and source, and their panels and rules are reported as not live (NOT_LIVE).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_QUERIES = "monitoring/exporters/postgres-queries.yaml"
BLACKBOX_CONFIG = "monitoring/blackbox/blackbox.yml"


@dataclass(frozen=True)
class Exporter:
    host: str  # compose service and k8s Service (or DaemonSet's headless Service)
    port: int
    image: str  # compose's image, without tag (k8s runs the same tag: consistency checks it)
    store: str | None  # the store it reads (its flow on the data network), if any
    store_port: int | None
    metrics: frozenset[str]
    live: str | None = None  # the Debian package scripts/check-live-metrics.sh runs
    not_live: str | None = None  # why it is not run here
    path: str = "/metrics"
    labels: dict = field(default_factory=dict)


def postgres_query_metrics() -> set[str]:
    """<query>_<column> for each GAUGE/COUNTER column of the custom queries file."""
    queries = yaml.safe_load((ROOT / POSTGRES_QUERIES).read_text())
    return {
        f"{name}_{col}"
        for name, q in queries.items()
        for m in q["metrics"]
        for col, spec in m.items()
        if spec["usage"] in ("GAUGE", "COUNTER")
    }


EXPORTERS: dict[str, Exporter] = {
    "postgres": Exporter(
        host="postgres-exporter", port=9187, image="quay.io/prometheuscommunity/postgres-exporter",
        store="postgres", store_port=5432, live="prometheus-postgres-exporter",
        metrics=frozenset({"pg_up", "pg_stat_activity_count", "pg_settings_max_connections",
                           "pg_database_size_bytes", *postgres_query_metrics()}),
    ),
    "redis": Exporter(
        host="redis-exporter", port=9121, image="oliver006/redis_exporter", store="redis", store_port=6379,
        live="prometheus-redis-exporter",
        metrics=frozenset({"redis_up", "redis_memory_used_bytes", "redis_memory_max_bytes", "redis_connected_clients"}),
    ),
    "node": Exporter(
        host="node-exporter", port=9100, image="quay.io/prometheus/node-exporter", store=None, store_port=None,
        live="prometheus-node-exporter",
        metrics=frozenset({"node_filesystem_avail_bytes", "node_filesystem_size_bytes"}),
    ),
    # NATS' monitoring port (/varz, /jsz) through the official exporter; no Debian package and no
    # Go toolchain here, so NATS' health is also probed by the blackbox exporter (live).
    "nats": Exporter(
        host="nats-exporter", port=7777, image="natsio/prometheus-nats-exporter", store="nats", store_port=8222,
        metrics=frozenset({"jetstream_server_total_message_bytes", "jetstream_server_max_storage"}),
        not_live="the NATS exporter has no Debian or PyPI package (an image only)",
    ),
    # MinIO serves its own metrics; no separate exporter.
    "minio": Exporter(
        host="minio", port=9000, image="minio/minio", store=None, store_port=None,
        path="/minio/v2/metrics/cluster",
        metrics=frozenset({"minio_cluster_nodes_offline_total", "minio_cluster_drive_offline_total",
                           "minio_cluster_capacity_usable_free_bytes", "minio_cluster_capacity_usable_total_bytes"}),
        not_live="MinIO has no Debian or PyPI package (the rehearsal stands moto in for it, without metrics)",
    ),
    "blackbox": Exporter(
        host="blackbox-exporter", port=9115, image="quay.io/prometheus/blackbox-exporter", store="nats",
        store_port=8222, live="prometheus-blackbox-exporter",
        metrics=frozenset({"probe_success", "probe_ssl_earliest_cert_expiry"}),
    ),
}  # fmt: skip

# Prometheus jobs that probe through the blackbox exporter: job -> (module, what it probes).
PROBES = {"nats-health": ("nats_healthz", "nats"), "tls": ("https_cert", "the HTTPS endpoints")}


def exporter_metrics() -> dict[str, str]:
    """metric name -> the job of the exporter that exports it."""
    return {m: job for job, e in EXPORTERS.items() for m in e.metrics}


def not_live_metrics() -> dict[str, str]:
    """metric name -> why no exporter of it runs in the live check."""
    return {m: f"{job}: {e.not_live}" for job, e in EXPORTERS.items() if e.not_live for m in e.metrics}
