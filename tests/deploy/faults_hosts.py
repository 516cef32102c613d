"""The fault harness's hosts (faults.py): the rehearsal's topology (rehearse.Rehearsal: network
namespaces on compose's addresses behind a router allowing only the design's flows) with a
three-node NATS cluster and two replicas of every domain service (graph, document, agent,
workflow, webhook) and of gateway and websocket, MinIO (moto) for the document service, the
rehearsal's webhook receiver in the `outside` host (rehearse_webhook.py, started by faults.py),
and an `ops` host for the operators' tools; each process started again after a fault by the
arguments it was first started with.

The NATS nodes run the repository's nats.conf (the rehearsal's copy) with their own server_name
and store and a cluster block routing to the others; the services get all three URLs and
CIM_STREAM_REPLICAS=3; the gateways a tenant with its own small rate limit; nginx gets every gateway and websocket replica in its upstreams, and each
CIM_<CALLER>_<CALLEE>_URLS (the gateway's upstreams, webhook's among them, the workflow's callees
and itself) every replica of its callee; Prometheus scrapes every replica each second with the
repository's rules (start_prometheus). A replica's flows are its service's: both webhook
replicas reach the receiver through the router's webhook → outside flows (network egress).
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import exporters  # this directory: the infrastructure exporters' table
import yaml
from rehearse import NOBODY, ROOT, SERVICE_UID, Failed, Rehearsal, log

NATS_NODES = ["nats", "nats2", "nats3"]
NATS_CLUSTER_PORT = 6222
# The domain services the load writes to besides graph (through the gateway's balancing).
DOMAINS = ["document", "agent", "workflow"]
# The webhook service takes no command of the load: each window's subscriptions (registered
# through the gateway) have it deliver the graph events of the load's REST tenants to the receiver.
REPLICATED = ["graph", *DOMAINS, "webhook", "gateway", "websocket"]
# Every domain service run here: its schema (events, outbox) and its stream, checked by the windows
# and at the end.
STORES = ["graph", *DOMAINS, "webhook"]
# A tenant with its own small rate limit (CIM_GATEWAY_RATE_LIMIT_TENANTS on every gateway): each
# window a fresh principal of it sends at LIMIT_RATE per second through nginx, and the gateways
# together must hold it to LIMIT_PER_MINUTE within the documented overshoot (faults_check).
LIMIT_TENANT = "019a0000-0000-7000-8000-000000000022"
LIMIT_PER_MINUTE = 20
LIMIT_RATE = 10.0
# The infrastructure exporters run here (tests/deploy/exporters.py: the packaged ones that watch a
# store the faults stop), each on its compose host and scraped by the shipped job, so the
# infrastructure rules (CimPostgresDown, CimRedisDown, CimNatsDown) see the faults too: job ->
# the tool (scripts/rehearse.sh) that runs it.
EXPORTED = {"postgres": "postgres_exporter", "redis": "redis_exporter", "blackbox": "blackbox_exporter"}
EXPORTER_HOSTS = [exporters.EXPORTERS[job].host for job in EXPORTED]
# The compose services run here; the rest of the compose topology is the rehearsal's.
RUN = {"nats", "postgres", "redis", "minio", "minio-init", "nginx", "prometheus", "outside", *REPLICATED, *EXPORTER_HOSTS}


class ReplicatedHosts(Rehearsal):
    def __init__(self, tools: dict, tmp: Path) -> None:
        super().__init__(tools, tmp)
        self.base: dict[str, str] = {}  # a replica's host -> the compose service it replicates
        self.launch: dict[str, tuple] = {}  # name -> spawn's arguments, to start it again

    def replicas(self, svc: str) -> list[str]:
        return [svc] + [h for h, b in self.base.items() if b == svc]

    def plan(self) -> None:
        super().plan()
        self.hosts = {h: nets for h, nets in self.hosts.items() if h in RUN}
        extra = {"nats2": "nats", "nats3": "nats", **{f"{s}2": s for s in REPLICATED}}
        for host, base in extra.items():
            self.hosts[host] = list(self.hosts[base])
            self.base[host] = base
        self.hosts["ops"] = ["application", "data"]
        for host in EXPORTER_HOSTS:  # the rehearsal leaves them to scripts/check-live-metrics.sh
            self.hosts[host] = list(self.compose["services"][host]["networks"])
            self.skipped.pop(host, None)
        for host in [*extra, "ops", *EXPORTER_HOSTS]:
            for n in self.hosts[host]:
                prefix = self.subnets[n].split("/")[0].rsplit(".", 1)[0]
                used = [int(a.rsplit(".", 1)[1]) for (h, net), a in self.addr.items() if net == n and h != "outside"]
                self.addr[(host, n)] = f"{prefix}.{max(used, default=9) + 1}"
        flows = []
        for src, dst, port, net in self.flows:
            for s in self.replicas(src) if src in self.hosts else [src]:
                flows += [(s, d, port, net) for d in (self.replicas(dst) if dst in self.hosts else [dst])]
        flows += [(a, b, NATS_CLUSTER_PORT, "data") for a in NATS_NODES for b in NATS_NODES if a != b]
        flows += [("ops", g, self.ports["graph"][0], "application") for g in self.replicas("graph")]
        flows += [("ops", n, 4222, "data") for n in NATS_NODES]
        flows += [("ops", "postgres", 5432, "data"), ("ops", "redis", 6379, "data")]
        self.flows = flows

    def spawn(self, name, host, argv, env, cwd=None, uid=None, wrap=None):
        self.launch[name] = (host, argv, env, cwd, uid, wrap)
        return super().spawn(name, host, argv, env, cwd=cwd, uid=uid, wrap=wrap)

    def respawn(self, name: str) -> None:
        host, argv, env, cwd, uid, wrap = self.launch[name]
        self.procs = [(n, p) for n, p in self.procs if n != name or p.poll() is None]
        super().spawn(name, host, argv, env, cwd=cwd, uid=uid, wrap=wrap)

    def proc(self, name: str) -> subprocess.Popen:
        return next(p for n, p in self.procs if n == name and p.poll() is None)

    def health(self, svc: str) -> dict:
        job = next((j for j in EXPORTED if exporters.EXPORTERS[j].host == svc), None)
        if job:
            return {"kind": "wait", "url": f"http://127.0.0.1:{exporters.EXPORTERS[job].port}/metrics"}
        return super().health(self.base.get(svc, svc))

    def start_exporter(self, host: str) -> None:
        """As compose runs it (its environment: the store's monitoring identity), with the
        repository's configuration files in place of the mounted copies."""
        env = self.env_of(host)
        if host == "postgres-exporter":
            argv = [f"--extend.query-path={ROOT / exporters.POSTGRES_QUERIES}"]
            env = {k: env[k] for k in ("DATA_SOURCE_URI", "DATA_SOURCE_USER", "DATA_SOURCE_PASS")}
        elif host == "redis-exporter":
            argv = [f"-redis.addr={env['REDIS_ADDR']}", f"-redis.user={env['REDIS_USER']}"]
            env = {"REDIS_PASSWORD": env["REDIS_PASSWORD"]}
        else:  # the blackbox exporter: its probes' modules
            argv, env = [f"--config.file={ROOT / exporters.BLACKBOX_CONFIG}", "--timeout-offset=1"], {}
        job = next(j for j in EXPORTED if exporters.EXPORTERS[j].host == host)
        self.spawn(host, host, [self.tools[EXPORTED[job]], *argv], env, uid=NOBODY)

    def start_nats(self) -> None:
        """Each node: the repository's nats.conf (the rehearsal's copy) with its own name and
        store and a cluster block routing to the other two."""
        spec = self.compose["services"]["nats"]
        args = [self.translate("nats", a) for a in spec.get("command", [])]
        conf = Path(args[args.index("--config") + 1])
        routes = ", ".join(f"nats://{n}:{NATS_CLUSTER_PORT}" for n in NATS_NODES)
        for node in NATS_NODES:
            store = self.tmp / "vol" / f"jetstream-{node}"
            store.mkdir(parents=True, exist_ok=True)
            text = re.sub(r"(?m)^server_name:.*$", f"server_name: cim-{node}", conf.read_text())
            text = re.sub(r"(?m)^(\s*)store_dir:.*$", rf"\g<1>store_dir: {store}", text)
            text += f"\ncluster {{\n  name: cim\n  listen: 0.0.0.0:{NATS_CLUSTER_PORT}\n  routes: [{routes}]\n}}\n"
            node_conf = conf.parent / f"{node}.conf"  # beside accounts.conf, which it includes
            node_conf.write_text(text)
            self.spawn(node, node, [self.tools["nats_server"], "--config", str(node_conf)], self.env_of("nats"))

    def start_nginx(self) -> None:
        conf = Path(self.translate("nginx", "/etc/nginx/nginx.conf"))
        text = conf.read_text()
        for svc in ("gateway", "websocket"):
            def more(m, svc=svc):
                return m.group(0) + "".join(f"\n{m.group(1)}server {h}:{m.group(2)};" for h in self.replicas(svc)[1:])

            text, n = re.subn(rf"(?m)^(\s*)server {svc}:(\d+);", more, text)
            if n != 1:
                raise Failed(f"nginx.conf: no single 'server {svc}:<port>;' in upstream {svc}")
        conf.write_text(text)
        super().start_nginx()

    def start_prometheus(self) -> None:
        """The repository's prometheus.yml and rules (the rehearsal's copies) with what a fault a
        few seconds long needs: scraping and evaluating every second, the job `cim` naming every
        replica's admin listener (labelled app=<its service>, as compose's targets are), and no
        Alertmanager (the harness reads the alerts' states from Prometheus itself). Of the
        exporters' jobs, those of the exporters run here, nats-health probing every NATS node."""
        conf = Path(self.translate("prometheus", "/etc/prometheus/prometheus.yml"))
        doc = yaml.safe_load(conf.read_text())
        doc["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"})
        doc.pop("alerting", None)
        cim = next(j for j in doc["scrape_configs"] if j["job_name"] == "cim")
        cim["static_configs"] = [{"targets": [f"{h}:{self.ports[s][1]}"], "labels": {"app": s}}
                                 for s in REPLICATED for h in self.replicas(s)]  # fmt: skip
        kept = [j for j in doc["scrape_configs"] if j["job_name"] in EXPORTED or j["job_name"] == "nats-health"]
        for job in kept:
            if job["job_name"] == "postgres":
                # Its scrape takes a second when Postgres refuses connections (it waits before it
                # reports pg_up 0): within a one-second timeout the scrape fails and pg_up is absent.
                job.update({"scrape_interval": "2s", "scrape_timeout": "2s"})
            if job["job_name"] == "nats-health":
                # A partitioned server's probe waits out its whole budget (the scrape timeout less
                # the exporter's offset, raised to 1 s below): at a one-second timeout the answer
                # came too late under load now and then, and the scrape failed with no
                # probe_success for CimNatsDown to see.
                job.update({"scrape_interval": "2s", "scrape_timeout": "2s"})
                url = job["static_configs"][0]["targets"][0]
                job["static_configs"] = [{"targets": [url.replace("//nats:", f"//{n}:", 1) for n in NATS_NODES]}]
        doc["scrape_configs"] = [cim, *kept]
        conf.write_text(yaml.safe_dump(doc, sort_keys=False))
        super().start_prometheus()

    def service_env(self, svc: str) -> dict[str, str]:
        env = dict(self.env_of(svc))
        creds = urllib.parse.urlsplit(env["CIM_NATS_URL"]).netloc.rsplit("@", 1)[0]
        env["CIM_NATS_URL"] = ",".join(f"nats://{creds}@{n}:4222" for n in NATS_NODES)
        env["CIM_STREAM_REPLICAS"] = "3"
        if svc == "gateway":
            env["CIM_GATEWAY_RATE_LIMIT_TENANTS"] = f"{LIMIT_TENANT}={LIMIT_PER_MINUTE}"
        for var, value in env.items():
            if re.fullmatch(r"CIM_[A-Z]+_[A-Z]+_URLS", var):
                env[var] = ",".join(self.every_replica(u.strip()) for u in value.split(",") if u.strip())
        return env

    def every_replica(self, url: str) -> str:
        """A callee's URL as the URLs of each of its replicas run here (the one of a service not
        run here as it is)."""
        u = urllib.parse.urlsplit(url)
        if u.hostname not in self.hosts:
            return url
        return ",".join(u._replace(netloc=u.netloc.replace(u.hostname, r, 1)).geturl() for r in self.replicas(u.hostname))

    def start_service(self, host: str, env=None, label=None) -> None:
        svc = self.base.get(host, host)
        self.spawn(host, host, [self.tools["cim"], "serve", "--services", svc], self.service_env(svc), uid=SERVICE_UID)

    def meta_leader(self, timeout: float = 60) -> str:
        """The JetStream meta leader once every node is a current peer: an R3 stream created
        before that can time out."""
        deadline = time.monotonic() + timeout
        meta: dict = {}
        while time.monotonic() < deadline:
            for node in NATS_NODES:  # only the leader lists its peers
                r = self.probe(node, {"kind": "http", "url": "http://127.0.0.1:8222/jsz"})
                meta = (r.get("body") or {}).get("meta_cluster") or {}
                peers = meta.get("replicas") or []
                if len(peers) == len(NATS_NODES) - 1 and all(p.get("current") for p in peers):
                    return meta["leader"]
            time.sleep(0.5)
        raise Failed(f"the JetStream meta group not formed within {timeout:.0f}s: {meta}")

    def bring_up(self) -> float:
        t0 = time.monotonic()
        starters = {"postgres": self.start_postgres, "redis": self.start_redis, "nginx": self.start_nginx,
                    "minio": self.start_minio, "prometheus": self.start_prometheus,
                    **{h: (lambda h=h: self.start_exporter(h)) for h in EXPORTER_HOSTS}}  # fmt: skip
        groups = [["postgres", "redis", "minio", *NATS_NODES], [r for s in ("graph", *DOMAINS) for r in self.replicas(s)],
                  [*self.replicas("webhook"), *self.replicas("gateway"), *self.replicas("websocket")],
                  ["nginx", "prometheus", *EXPORTER_HOSTS]]  # fmt: skip
        for group in groups:
            if "graph" in group:  # compose's minio-init, before the document service depends on its bucket
                log(f"minio-init made bucket {self.minio_init()}")
            for host in group:
                if host == "nats":
                    self.start_nats()
                elif host in starters:
                    starters[host]()
                elif host not in NATS_NODES:
                    self.start_service(host)
            threads = [threading.Thread(target=self._settle, args=(h,)) for h in group]
            self._unhealthy: list[str] = []
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if self._unhealthy:
                raise Failed("\n".join(self._unhealthy))
            log(f"{', '.join(group)} healthy")
            if "nats" in group:
                log(f"JetStream meta leader: {self.meta_leader()}")
        return time.monotonic() - t0

    def _settle(self, host: str) -> None:
        # A service that exits at start-up (a JetStream request timing out on a busy machine:
        # eight domain replicas create or update their R3 streams at once) is started again, up
        # to twice more, as compose's restart policy or Kubernetes would.
        for attempt in (1, 2, 3):
            try:
                self.wait_healthy(host, timeout=60)
                return
            except Failed as e:
                if attempt == 3 or host not in self.launch or any(n == host and p.poll() is None for n, p in self.procs):
                    self._unhealthy.append(str(e))
                    return
                log(f"{host} exited while starting; starting it again:\n{self.tail(host, 2)}")
                self.respawn(host)
