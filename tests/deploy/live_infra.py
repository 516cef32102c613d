"""The live check's infrastructure exporters (tests/deploy/exporters.py), run for real beside the
monolith by live_metrics.py: Debian's postgres, redis, node and blackbox exporters on free ports,
against the run's own stores, with the repository's configuration and identities:

- postgres_exporter with monitoring/exporters/postgres-queries.yaml, logged in as a throwaway
  role that has only pg_monitor (as docker/postgres/init's `monitoring`), on the run's database,
  where the monolith's domain schemas hold their events tables;
- redis_exporter as the ACL user `monitoring` with the rules compose.yaml gives it, on a Redis
  whose maxmemory is set (so the memory ratio has a denominator);
- node_exporter's filesystem collector;
- the blackbox exporter with monitoring/blackbox/blackbox.yml, probing the run's NATS /healthz
  and an HTTPS server of this process whose certificate (made here, valid 30 days) is trusted
  through the module's CA file: the only change to the shipped module.

The scrape jobs are the shipped ones (monitoring/prometheus/prometheus.yml), their targets
replaced by these addresses. MinIO and the NATS exporter have no binary here: their metrics are
pending (exporters.not_live_metrics)."""

from __future__ import annotations

import copy
import http.server
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import urllib.parse
from pathlib import Path

import yaml

import consistency_infra
from exporters import BLACKBOX_CONFIG, EXPORTERS, POSTGRES_QUERIES, PROBES, ROOT

TOOLS = Path("/var/tmp/cim-deploy-tools")


def binary(package: str) -> str:
    """The exporter's binary: installed, else unpacked by scripts/lib/debtool.sh (check-live-metrics.sh)."""
    found = shutil.which(package)
    if found:
        return found
    p = TOOLS / package / "usr/bin" / package
    if p.is_file():
        return str(p)
    raise SystemExit(f"live-metrics: no {package} (scripts/check-live-metrics.sh unpacks it)")


def resp(port: int, *args: str) -> bytes:
    """One Redis command over RESP, as the default user."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"*{len(args)}\r\n".encode() + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args))
        reply = s.recv(4096)
    if reply.startswith(b"-"):
        raise SystemExit(f"live-metrics: redis {args[0]} {args[1] if len(args) > 1 else ''}: {reply.decode().strip()}")
    return reply


def compose_monitoring_acl() -> list[str]:
    """The rules compose.yaml gives the Redis user `monitoring` (after `on ">$$PASSWORD"`)."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    acl = consistency_infra.redis_monitoring_acl(" ".join(compose["services"]["redis"]["command"]))
    if not acl:
        raise SystemExit("live-metrics: compose.yaml's redis defines no user monitoring")
    return acl[2:]


class TlsServer:
    """An HTTPS server on a free port with a self-signed certificate made by openssl."""

    def __init__(self, tmp: Path) -> None:
        self.cert, key = tmp / "tls.crt", tmp / "tls.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj",
                        "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(self.cert)], check=True, capture_output=True)  # fmt: skip

        class Ok(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


class Exporters:
    """Starts the live exporters through `run` (live_metrics.Run: spawn, free ports, cleanup) and
    gives Prometheus' scrape jobs for them."""

    def __init__(self, run, free_port, wait_for, port_open) -> None:
        self.run, self.free_port, self.wait_for, self.port_open = run, free_port, wait_for, port_open
        self.addr: dict[str, str] = {}  # job -> host:port
        self.probes: dict[str, list[str]] = {}  # probe job -> URLs
        self.role: str | None = None
        self.tls: TlsServer | None = None

    def start(self, db_url: str, redis_url: str, nats_monitor: str) -> None:
        self.start_postgres(db_url)
        self.start_redis(redis_url)
        self.start_node()
        self.tls = TlsServer(self.run.tmp)
        self.start_blackbox()
        self.probes = {"nats-health": [f"{nats_monitor}/healthz?js-enabled-only=true"], "tls": [self.tls.url]}

    def spawn(self, job: str, argv: list[str], env: dict | None = None) -> None:
        port = self.free_port()
        p = self.run.spawn(f"{job}-exporter", [*argv[:1], *[a.replace("{port}", str(port)) for a in argv[1:]]], env=env)
        self.wait_for(lambda: self.port_open(port), 15, f"the {job} exporter", lambda: self.run.alive(f"{job}-exporter", p))
        self.addr[job] = f"127.0.0.1:{port}"

    def start_postgres(self, db_url: str) -> None:
        # A login role with pg_monitor only, like the deployments' `monitoring` (its name is this
        # run's: roles are cluster-wide, shared with other tests). Dropped by close().
        role, password = f"cim_live_monitoring_{secrets.token_hex(4)}", secrets.token_hex(16)
        self.run_psql(db_url, f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'; GRANT pg_monitor TO \"{role}\"")
        self.role = role
        u = urllib.parse.urlsplit(db_url)
        dsn = f"postgresql://{role}:{password}@{u.hostname}:{u.port or 5432}{u.path}?sslmode=disable"
        self.spawn("postgres", [binary(EXPORTERS["postgres"].live), "--web.listen-address=127.0.0.1:{port}",
                                f"--extend.query-path={ROOT / POSTGRES_QUERIES}"],
                   env={"DATA_SOURCE_NAME": dsn, "PATH": "/usr/bin:/bin"})  # fmt: skip

    def start_redis(self, redis_url: str) -> None:
        port = urllib.parse.urlsplit(redis_url).port
        password = secrets.token_hex(16)
        resp(port, "ACL", "SETUSER", "monitoring", "reset", "on", f">{password}", *compose_monitoring_acl())
        resp(port, "CONFIG", "SET", "maxmemory", str(256 * 1024 * 1024))
        # The password in its environment, as compose and k8s give it (REDIS_PASSWORD).
        self.spawn("redis", [binary(EXPORTERS["redis"].live), "-web.listen-address=127.0.0.1:{port}",
                             f"-redis.addr=redis://127.0.0.1:{port}", "-redis.user=monitoring"],
                   env={"REDIS_PASSWORD": password, "PATH": "/usr/bin:/bin"})  # fmt: skip

    def start_node(self) -> None:
        self.spawn("node", [binary(EXPORTERS["node"].live), "--web.listen-address=127.0.0.1:{port}",
                            "--collector.disable-defaults", "--collector.filesystem"])  # fmt: skip

    def start_blackbox(self) -> None:
        config = yaml.safe_load((ROOT / BLACKBOX_CONFIG).read_text())
        config["modules"]["https_cert"]["http"]["tls_config"] = {"ca_file": str(self.tls.cert)}
        path = self.run.tmp / "blackbox.yml"
        path.write_text(yaml.safe_dump(config))
        self.spawn("blackbox", [binary(EXPORTERS["blackbox"].live), "--web.listen-address=127.0.0.1:{port}",
                                f"--config.file={path}"])  # fmt: skip

    def scrape_configs(self) -> list[dict]:
        """The shipped jobs of the exporters running here, pointed at them."""
        shipped = {j["job_name"]: j for j in yaml.safe_load((ROOT / "monitoring/prometheus/prometheus.yml").read_text())["scrape_configs"]}
        out = []
        blackbox = EXPORTERS["blackbox"]
        for job, addr in self.addr.items():
            j = copy.deepcopy(shipped[job])
            j["static_configs"] = [{"targets": [addr]}]
            out.append(j)
        for job in PROBES:
            j = copy.deepcopy(shipped[job])
            j["static_configs"] = [{"targets": self.probes[job]}]
            for r in j["relabel_configs"]:
                if r.get("replacement") == f"{blackbox.host}:{blackbox.port}":
                    r["replacement"] = self.addr["blackbox"]
            out.append(j)
        return out

    def targets(self) -> int:
        return len(self.addr) + sum(len(v) for v in self.probes.values())

    def describe(self) -> str:
        return ", ".join(f"{job} {addr}" for job, addr in sorted(self.addr.items())) + (
            f"; probing {', '.join(u for v in self.probes.values() for u in v)}"
        )

    def run_psql(self, url: str, sql: str) -> None:
        r = subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-qXc", sql], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"live-metrics: psql {sql!r} failed: {r.stderr.strip()}")

    def close(self, admin_url: str | None) -> None:
        """After the processes are stopped and the database dropped (Run.close): the role (on the
        server's admin database) and the HTTPS server."""
        if self.tls:
            self.tls.close()
        if self.role and admin_url:
            subprocess.run(["psql", admin_url, "-qXc", f'DROP ROLE IF EXISTS "{self.role}"'], capture_output=True)

