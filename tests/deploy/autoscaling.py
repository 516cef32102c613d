#!/usr/bin/env python3
"""Static check of the autoscalers that scale on a metric of their own (issue 22): on each
rendered k8s overlay, every HorizontalPodAutoscaler metric that is not CPU or memory is one the
cluster can serve and the service really exports, so a renamed gauge or a rule that drifted
cannot leave an HPA blind without a failing check.

For each HPA metric of type External (type Pods/Object are refused: the k8s Prometheus labels
series with `app` only, no pod or namespace, so only external rules can serve them):
- prometheus-adapter's rules (the overlay's ConfigMap prometheus-adapter-config, generated from
  monitoring/prometheus-adapter/config.yaml) have an `externalRules` entry that exposes that name
  (its seriesQuery's metric through `name.matches`/`name.as`), with a metricsQuery that sums
  `<<.Series>>{<<.LabelMatchers>>}` and `namespaced: false` (that Prometheus has no namespace);
- the rule's series is a gauge the HPA target's own crate exports (a `const` with that name used
  by `gauge!`/`describe_gauge!` in crates/<its crate>/src), selected by `app="<target>"`, the
  label monitoring/prometheus/prometheus-k8s.yml gives the target's pods;
- an AverageValue target stays below the connections a pod takes (CIM_WEBSOCKET_MAX_CONNECTIONS
  as the pod gets it, else the code's default) for the websocket: past it a pod refuses clients
  before the HPA would add one;
- the HPA still has a CPU metric beside it.
And the websocket's HPA must scale on its connections (the gauge it exports for them).

usage: autoscaling.py NAME=RENDERED.yaml ...   (scripts/check-deploy.sh, on every overlay)
       autoscaling.py --self-test RENDERED.yaml (each drift above made on purpose must fail)
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import yaml

import consistency  # this directory: service_crate, k8s_index (read only)
from capacity import pod_env

ROOT = Path(__file__).resolve().parents[2]
# The services that must scale on a metric of their own, and the gauge it is (by its role: the
# websocket's open connections; checked to be what the websocket exports).
MUST_SCALE_ON = {"websocket": "cim_websocket_connected_clients"}


def gauges_of(service: str) -> set[str]:
    """The gauge names the service's crate exports."""
    crate = consistency.service_crate(service)
    if crate is None:
        return set()
    out: set[str] = set()
    for path in Path(crate).glob("src/**/*.rs"):
        text = path.read_text()
        consts = dict(re.findall(r'const (\w+): &str = "(cim_[a-z0-9_]+)"', text))
        for arg in re.findall(r"\b(?:gauge|describe_gauge)!\(\s*(\w+|\"[^\"]+\")", text):
            out.add(arg.strip('"') if arg.startswith('"') else consts.get(arg, ""))
    return out - {""}


def scrape_label_values() -> set[str]:
    """The `app` values the k8s Prometheus gives the pods it finds (`<app>-pods` DNS names)."""
    conf = yaml.safe_load((ROOT / "monitoring/prometheus/prometheus-k8s.yml").read_text())
    apps = set()
    for job in conf["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            apps.update(re.sub(r"-pods$", "", n) for n in sd["names"])
    return apps


def series_of(rule: dict) -> tuple[str | None, dict[str, str]]:
    """The metric name and the equality label matchers of a rule's seriesQuery."""
    q = rule.get("seriesQuery", "")
    labels = dict(re.findall(r'(\w+)="([^"]*)"', q))
    name = labels.pop("__name__", None)
    if name is None:
        m = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", q)
        name = m.group(1) if m else None
    return name, labels


def exposed_name(rule: dict, series: str) -> str | None:
    """What the adapter calls the series under the rule's `name` (matches/as, Go regexp $1)."""
    naming = rule.get("name") or {}
    pattern = naming.get("matches", "^(.*)$")
    m = re.search(pattern, series)
    if not m:
        return None
    as_ = naming.get("as") or ("${1}" if m.groups() else "${0}")
    return re.sub(r"\$\{?(\d+)\}?", lambda g: m.group(int(g.group(1))) or "", as_)


def adapter_rules(docs: list[dict]) -> dict | None:
    cm = consistency.k8s_find(docs, "ConfigMap", "prometheus-adapter-config")
    return None if cm is None else yaml.safe_load(cm["data"]["config.yaml"])


def check(docs: list[dict], gauges=gauges_of) -> list[str]:
    """Every problem found on one rendered overlay."""
    problems: list[str] = []
    rules = adapter_rules(docs)
    idx = consistency.k8s_index(docs)
    apps = scrape_label_values()
    scaled_on: dict[str, set[str]] = {}
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]["name"]
        where = f"HPA {hpa['metadata']['name']}"
        metrics = hpa["spec"].get("metrics") or []
        own = [m for m in metrics if m["type"] != "Resource"]
        if own and not any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in metrics):
            problems.append(f"{where}: scales on {[m['type'] for m in own]} but not on CPU beside it")
        for m in own:
            if m["type"] != "External":
                problems.append(f"{where}: a {m['type']} metric needs pod/namespace labels the k8s Prometheus "
                                "does not set: use an External metric")  # fmt: skip
                continue
            name = m["external"]["metric"]["name"]
            scaled_on.setdefault(target, set()).add(name)
            if rules is None:
                problems.append(f"{where}: scales on {name} but the overlay has no prometheus-adapter-config")
                continue
            matching = []
            for rule in rules.get("externalRules") or []:
                series, labels = series_of(rule)
                if series and exposed_name(rule, series) == name:
                    matching.append((rule, series, labels))
            if len(matching) != 1:
                problems.append(f"{where}: {len(matching)} externalRules expose {name} (want exactly one)")
                continue
            rule, series, labels = matching[0]
            if series not in gauges(target):
                problems.append(f"{where}: {name} reads {series}, which is not a gauge crates/ of {target} exports")
            if labels.get("app") != target or labels.get("app") not in apps:
                problems.append(f"{where}: the rule for {name} selects app={labels.get('app')!r}; the k8s "
                                f"Prometheus labels {target}'s pods app={target!r} (prometheus-k8s.yml)")  # fmt: skip
            if not re.fullmatch(r"\s*sum\(<<\.Series>>\{<<\.LabelMatchers>>\}\)\s*", rule.get("metricsQuery", "")):
                problems.append(f"{where}: the rule for {name} must sum <<.Series>>{{<<.LabelMatchers>>}} "
                                "(the HPA's AverageValue divides the sum by its pods)")  # fmt: skip
            if (rule.get("resources") or {}).get("namespaced") is not False:
                problems.append(f"{where}: the rule for {name} must say resources.namespaced: false "
                                "(the k8s Prometheus sets no namespace label)")  # fmt: skip
            tgt = m["external"]["target"]
            if tgt.get("type") != "AverageValue":
                problems.append(f"{where}: {name}'s target must be an AverageValue (per pod), not {tgt.get('type')}")
            elif target == "websocket":
                deploy = idx.get(("Deployment", target))
                env = pod_env(deploy["spec"]["template"]["spec"]["containers"][0], idx) if deploy else {}
                limit = int(env.get("CIM_WEBSOCKET_MAX_CONNECTIONS", code_default("CIM_WEBSOCKET_MAX_CONNECTIONS")))
                if float(tgt["averageValue"]) >= limit:
                    problems.append(f"{where}: target {tgt['averageValue']} connections per pod is not below "
                                    f"the {limit} a pod takes (CIM_WEBSOCKET_MAX_CONNECTIONS)")  # fmt: skip
    for service, metric in MUST_SCALE_ON.items():
        if ("Deployment", service) in idx and metric not in scaled_on.get(service, set()):
            problems.append(f"{service}: no HPA scales it on {metric}")
        if metric not in gauges(service):
            problems.append(f"{service}: MUST_SCALE_ON names {metric}, which it does not export as a gauge")
    return problems


def code_default(var: str) -> str:
    src = (ROOT / "crates/cim-runtime/src/config.rs").read_text()
    m = re.search(rf'var\(\s*{var},\s*Some\("(\d+)"\)', src)
    if not m:
        raise SystemExit(f"autoscaling: no default for {var} in crates/cim-runtime/src/config.rs")
    return m.group(1)


def self_test(docs: list[dict]) -> list[str]:
    """Each drift made on purpose must be found; answers the drifts that were not."""
    assert not check(docs), check(docs)

    def hpa(d: list[dict]) -> dict:
        return next(x for x in d if x["kind"] == "HorizontalPodAutoscaler" and x["metadata"]["name"] == "websocket")

    def ext(d: list[dict]) -> dict:
        return next(m for m in hpa(d)["spec"]["metrics"] if m["type"] == "External")["external"]

    def rule_of(d: list[dict]) -> tuple[dict, dict]:
        cm = consistency.k8s_find(d, "ConfigMap", "prometheus-adapter-config")
        return cm, yaml.safe_load(cm["data"]["config.yaml"])

    def edit_rules(d: list[dict], change) -> None:
        cm, conf = rule_of(d)
        change(conf["externalRules"][0])
        cm["data"]["config.yaml"] = yaml.safe_dump(conf)

    drifts = {
        "the HPA names another metric": lambda d: ext(d)["metric"].update(name="cim_websocket_subscriptions_x"),
        "the HPA lost the metric": lambda d: hpa(d)["spec"].update(
            metrics=[m for m in hpa(d)["spec"]["metrics"] if m["type"] == "Resource"]),
        "the HPA lost CPU": lambda d: hpa(d)["spec"].update(
            metrics=[m for m in hpa(d)["spec"]["metrics"] if m["type"] != "Resource"]),
        "the rule reads a series the code does not export": lambda d: edit_rules(
            d, lambda r: r.update(seriesQuery='{__name__="cim_websocket_clients",app="websocket"}',
                                  name={"matches": "^.*$", "as": "cim_websocket_connected_clients"})),
        "the rule selects another app": lambda d: edit_rules(
            d, lambda r: r.update(seriesQuery='{__name__="cim_websocket_connected_clients",app="ws"}')),
        "the rule averages instead of summing": lambda d: edit_rules(
            d, lambda r: r.update(metricsQuery="avg(<<.Series>>{<<.LabelMatchers>>})")),
        "the rule is namespaced": lambda d: edit_rules(d, lambda r: r.update(resources={})),
        "the target is past what a pod takes": lambda d: ext(d)["target"].update(averageValue="10000"),
        "the adapter config is missing": lambda d: d.remove(rule_of(d)[0]),
    }
    missed = []
    for what, drift in drifts.items():
        mutated = copy.deepcopy(docs)
        drift(mutated)
        if not check(mutated):
            missed.append(what)
    # And the code side: the websocket no longer exporting the gauge.
    if not check(docs, gauges=lambda s: set()):
        missed.append("the websocket stopped exporting the gauge")
    return missed


def main() -> int:
    if sys.argv[1:2] == ["--self-test"]:
        docs = [d for d in yaml.safe_load_all(Path(sys.argv[2]).read_text()) if d]
        missed = self_test(docs)
        for what in missed:
            print(f"FAIL  autoscaling.py does not notice: {what}")
        print("autoscaling self-test: every drift found" if not missed else "autoscaling self-test failed")
        return 1 if missed else 0
    failed = []
    for arg in sys.argv[1:]:
        name, path = arg.split("=", 1)
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
        problems = check(docs)
        scaled = [f"{d['metadata']['name']} on {m['external']['metric']['name']} (target {m['external']['target'].get('averageValue')} per pod)"
                  for d in docs if d["kind"] == "HorizontalPodAutoscaler"
                  for m in d["spec"].get("metrics") or [] if m["type"] == "External"]  # fmt: skip
        print(f"{'ok  ' if not problems else 'FAIL'}  k8s/overlays/{name}: autoscalers on their own metrics: "
              + (", ".join(scaled) or "none"))  # fmt: skip
        for p in problems:
            print(f"  {p}")
        if problems:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
