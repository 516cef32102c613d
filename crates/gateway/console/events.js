// Live events: the websocket feed (live.js) as a table, filtered by domain, aggregate type,
// aggregate id and event types; also the panel on the graph page.

import { field, h, show } from "./dom.js";
import { subscribe, watchStatus } from "./live.js";

const DOMAINS = ["graph", "document", "agent", "workflow"];
const KEEP = 200; // rows kept, newest first

function time(iso) {
  return (iso || "").replace("T", " ").slice(0, 19);
}

/** Where an event's aggregate is shown in the console, if anywhere. */
function link(e) {
  if (e.domain === "graph") return `#/graphs/${encodeURIComponent(e.aggregate_id)}`;
  return null;
}

/**
 * A feed: a status line and a table of events, newest first. `filter` as the websocket takes it;
 * `onEvent(envelope)` also runs for each. Answers {element, stop}.
 */
export function feed(filter, { caption, compact = false, onEvent } = {}) {
  const rows = h("tbody", { class: "event-rows" });
  const label = h("span");
  const since = h("span");
  const state = h("p", { class: "feed-status", role: "status" }, label, since);
  const empty = h("p", { class: "feed-empty" }, "No events since the page opened.");
  const columns = compact ? ["Time (UTC)", "Event", "Version", "By"] : ["Time (UTC)", "Domain", "Aggregate", "Event", "Version", "By"];
  const table = h(
    "table",
    { class: "list events" },
    h("caption", { class: "sr" }, caption || "Live events"),
    h("thead", {}, h("tr", {}, ...columns.map((c) => h("th", { scope: "col" }, c)))),
    rows,
  );
  const unwatch = watchStatus(({ state: s, detail }) => {
    state.dataset.state = s;
    if (s !== "live") delete state.dataset.subscribed;
    label.textContent = { live: "Live", connecting: "Connecting…", closed: "Not connected" }[s] + (detail ? ` — ${detail}` : "");
  });
  const stop = subscribe(
    filter,
    (e, position) => {
      empty.hidden = true;
      const href = link(e);
      const aggregate = `${e.aggregate_type} ${e.aggregate_id}`;
      const cells = compact
        ? [time(e.occurred_at), e.event_type, e.sequence, e.actor]
        : [
            time(e.occurred_at),
            e.domain,
            href ? h("a", { href }, aggregate) : aggregate,
            e.event_type,
            e.sequence,
            e.actor,
          ];
      rows.prepend(h("tr", { dataset: { position, eventType: e.event_type } }, ...cells.map((c) => h("td", {}, c))));
      while (rows.children.length > KEEP) rows.lastElementChild.remove();
      onEvent?.(e);
    },
    {
      onError: (err) => {
        delete state.dataset.subscribed;
        since.textContent = ` — refused: ${err.code}: ${err.message}`;
      },
      onSubscribed: (position) => {
        state.dataset.subscribed = "true";
        since.textContent = ` — watching from position ${position}`;
      },
    },
  );
  return {
    element: h("div", { class: "feed" }, state, h("div", { class: "scroll" }, table), empty),
    stop: () => {
      stop();
      unwatch();
    },
  };
}

/** The page: a filter form, and the feed for the filter last applied. */
export function eventsPage({ view, onLeave }) {
  const domain = h("select", { id: "events-domain", name: "domain" }, ...DOMAINS.map((d) => h("option", { value: d }, d)));
  const aggregateType = h("input", { id: "events-aggregate-type", name: "aggregate_type", placeholder: "any" });
  const aggregateId = h("input", { id: "events-aggregate-id", name: "aggregate_id", placeholder: "any" });
  const eventTypes = h("input", { id: "events-types", name: "event_types", placeholder: "any, or node_added, edge_added" });
  const form = h(
    "form",
    { class: "card", id: "events-filter" },
    h("h2", {}, "Filter"),
    h(
      "div",
      { class: "row" },
      field("Domain", domain),
      field("Aggregate type", aggregateType),
      field("Aggregate id", aggregateId),
      field("Event types", eventTypes),
    ),
    h("button", { type: "submit" }, "Watch"),
  );
  const holder = h("section", { class: "card", "aria-labelledby": "events-title" });
  let current = null;
  function watch() {
    current?.stop();
    const filter = { domain: domain.value };
    if (aggregateType.value.trim()) filter.aggregate_type = aggregateType.value.trim();
    if (aggregateId.value.trim()) filter.aggregate_id = aggregateId.value.trim();
    const types = eventTypes.value.split(",").map((t) => t.trim()).filter(Boolean);
    if (types.length) filter.event_types = types;
    const described = Object.entries(filter).map(([k, v]) => `${k} ${Array.isArray(v) ? v.join(", ") : v}`).join(" · ");
    current = feed(filter, { caption: `Events: ${described}` });
    holder.replaceChildren(h("h2", { id: "events-title" }, "Events"), h("p", { class: "meta", id: "events-watching" }, `Watching ${described}`), current.element);
  }
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    watch();
  });
  onLeave(() => current?.stop());
  show(
    view,
    "Live events",
    h("h1", {}, "Live events"),
    h("p", { class: "meta" }, "Events of this tenant as they are stored, over the websocket feed; newest first."),
    form,
    holder,
  );
  watch();
}
