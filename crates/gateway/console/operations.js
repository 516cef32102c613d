// Operations (admins): the services behind the gateway and their readiness, NATS as `cim
// doctor` checks it (the account's room, the cluster's nodes, each stream's replicas and room),
// every domain stream with its consumers' lag, dead letters per consumer, and the Grafana dashboards;
// GET /api/v1/admin/operations, read again every 10 s while the page is open.

import { api } from "./api.js";
import { h, report, show, table } from "./dom.js";

const EVERY_MS = 10000;

const num = (v) => h("td", { class: "num" }, v ?? "—");
const flag = (ok, yes, no) => h("td", {}, h("span", { class: ok ? "ok" : "bad" }, ok ? yes : no));

function services(list) {
  const rows = list.map((s) => h("tr", { dataset: { service: s.name } }, h("td", {}, s.name), flag(s.ready, "ready", "not ready"), h("td", {}, s.detail)));
  return table("Services and their readiness", ["Service", "State", "Detail"], h("tbody", {}, ...rows), "services");
}

function natsChecks(lines) {
  const rows = lines.map((c) => h("tr", { dataset: { check: c.name } }, h("td", {}, c.name), flag(c.ok, "ok", "failing"), h("td", {}, c.detail)));
  return table("NATS checks", ["Check", "State", "Detail"], h("tbody", {}, ...rows), "nats-checks");
}

function streams(list) {
  const rows = [];
  for (const s of list) {
    const replicas = s.problem ? h("td", {}, h("span", { class: "bad" }, s.problem)) : h("td", {}, s.replicas ?? "—");
    const head = [h("td", {}, s.stream), num(s.messages), num(s.last_sequence), replicas];
    if (s.error) {
      rows.push(h("tr", { dataset: { stream: s.domain } }, ...head, h("td", { colspan: 5 }, s.error)));
      continue;
    }
    if (!s.consumers.length) rows.push(h("tr", { dataset: { stream: s.domain } }, ...head, h("td", { colspan: 5 }, "no consumers")));
    s.consumers.forEach((c, i) => {
      const first = i === 0 ? head : [h("td", {}), h("td", {}), h("td", {}), h("td", {})];
      rows.push(
        h(
          "tr",
          { dataset: { stream: s.domain, consumer: c.name } },
          ...first,
          h("td", {}, c.name),
          h("td", {}, c.durable ? "durable" : "ephemeral"),
          num(c.pending),
          num(c.ack_pending),
          num(c.redelivered),
        ),
      );
    });
  }
  const columns = ["Stream", "Messages", "Last position", "Replicas and room", "Consumer", "Kind", "Lag (pending)", "Awaiting ack", "Redelivered"];
  return table("Streams and consumer lag", columns, h("tbody", {}, ...rows), "streams");
}

function deadLetters(d) {
  const summary = h("p", { id: "dead-letter-total" }, d.error ? `${d.stream}: ${d.error}` : `${d.stream}: ${d.total} dead letter${d.total === 1 ? "" : "s"}`);
  if (!d.by_subject.length) return [summary];
  const rows = d.by_subject.map((s) => h("tr", {}, h("td", {}, s.subject), num(s.messages)));
  return [summary, table("Dead letters per consumer", ["Subject", "Dead letters"], h("tbody", {}, ...rows), "dead-letters"), h("p", { class: "meta" }, "Each is an event a consumer gave up on (header Cim-Dlq-Reason): fix the consumer, then replay or purge them.")];
}

function dashboards(list) {
  if (!list.length) return h("p", { id: "no-dashboards" }, "Set CIM_GATEWAY_GRAFANA_URL on the gateway to link the Grafana dashboards here.");
  return h("ul", { id: "dashboards", class: "links" }, ...list.map((d) => h("li", {}, h("a", { href: d.url, target: "_blank", rel: "noopener" }, d.title))));
}

export async function operationsPage({ view, onLeave }) {
  const body = h("div", { id: "operations" });
  const stamp = h("p", { class: "meta", id: "operations-stamp", role: "status" });
  const again = h("button", { type: "button", id: "operations-refresh" }, "Refresh");
  let timer = null;
  async function load() {
    clearTimeout(timer);
    try {
      const o = await api("GET", "/api/v1/admin/operations");
      body.replaceChildren(
        h("section", { class: "card", "aria-labelledby": "ops-services" }, h("h2", { id: "ops-services" }, "Services"), services(o.services)),
        h("section", { class: "card", "aria-labelledby": "ops-nats" }, h("h2", { id: "ops-nats" }, "NATS"), natsChecks(o.nats)),
        h("section", { class: "card", "aria-labelledby": "ops-streams" }, h("h2", { id: "ops-streams" }, "Streams and consumers"), streams(o.streams)),
        h("section", { class: "card", "aria-labelledby": "ops-dlq" }, h("h2", { id: "ops-dlq" }, "Dead letters"), ...deadLetters(o.dead_letters)),
        h("section", { class: "card", "aria-labelledby": "ops-dashboards" }, h("h2", { id: "ops-dashboards" }, "Dashboards"), dashboards(o.dashboards)),
      );
      stamp.textContent = `Read at ${new Date().toISOString().slice(11, 19)} UTC; every ${EVERY_MS / 1000} s while open.`;
      timer = setTimeout(load, EVERY_MS);
    } catch (e) {
      report(e);
    }
  }
  again.addEventListener("click", load);
  onLeave(() => clearTimeout(timer));
  show(
    view,
    "Operations",
    h("h1", {}, "Operations"),
    h("div", { class: "row-line" }, stamp, again),
    body,
  );
  await load();
}
