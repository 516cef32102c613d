// One graph: drawn at its latest version or, with the slider, as of an earlier one
// (GET /api/v1/graphs/{id}/versions/{v}); select a node or edge to see and edit its
// properties; add nodes and edges (writers, at the latest version only); neighbours and paths
// highlighted in the drawing (graph-find.js); rename and archive (graph-manage.js).

import { api, seg } from "./api.js";
import { field, h, jsonObject, report, show, submitting } from "./dom.js";
import { draw, interactive, reset, zoom } from "./drawing.js";
import { feed } from "./events.js";
import { findPanel } from "./graph-find.js";
import { managePanel } from "./graph-manage.js";

const plural = (n, one) => `${n} ${one}${n === 1 ? "" : "s"}`;

export async function graphPage({ view, session, onLeave }, id) {
  const base = `/api/v1/graphs/${seg(id)}`;
  const writer = session.can("writer");
  let head = 0;
  let shown = null; // the snapshot drawn
  let selected = null;
  let request = 0; // only the latest load draws
  let archived = false; // an archived graph refuses every change

  const title = h("h1", {}, "Graph");
  const meta = h("p", { class: "meta", id: "graph-meta" });
  const drawing = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  drawing.id = "drawing";
  drawing.setAttribute("tabindex", "0");
  drawing.setAttribute("role", "group");
  drawing.setAttribute("aria-label", "Graph drawing: arrows pan, + and - zoom, 0 resets; Tab moves through nodes and edges");
  drawing.setAttribute("viewBox", "-100 -100 200 200");
  interactive(drawing);
  const tool = (label, text, act) => h("button", { type: "button", "aria-label": label, title: label, onclick: act }, text);
  const toolbar = h(
    "div",
    { class: "toolbar" },
    tool("Zoom in", "+", () => zoom(drawing, 1 / 1.25)),
    tool("Zoom out", "−", () => zoom(drawing, 1.25)),
    tool("Reset view", "Fit", () => reset(drawing)),
  );
  const find = findPanel(base, drawing);
  const manage = writer ? managePanel(base, () => refresh()) : null;
  const counts = h("p", { id: "drawn-counts", role: "status" });
  const slider = h("input", { type: "range", id: "version-slider", min: 1, max: 1, value: 1, step: 1 });
  const sliderLabel = h("output", { id: "version-label", for: "version-slider" });
  const history = h("p", { class: "notice", id: "history-note", hidden: true }, "An earlier version: read-only. Move the slider to the right end to edit.");
  const selection = h("section", { class: "card", id: "selection", "aria-labelledby": "selection-title" });

  const nodeId = h("input", { id: "node-id", name: "id", placeholder: "generated" });
  const nodeType = h("input", { id: "node-type", name: "type", required: true });
  const nodeProps = h("textarea", { id: "node-properties", name: "properties", rows: 2, placeholder: '{"name": "Alice"}' });
  const addNode = h(
    "form",
    { class: "card", id: "add-node" },
    h("h2", {}, "Add a node"),
    h("div", { class: "row" }, field("Node id", nodeId), field("Type", nodeType)),
    field("Properties (JSON)", nodeProps),
    h("button", { type: "submit" }, "Add node"),
  );
  const edgeType = h("input", { id: "edge-type", name: "type", required: true });
  const source = h("select", { id: "edge-source", name: "source", required: true });
  const target = h("select", { id: "edge-target", name: "target", required: true });
  const edgeProps = h("textarea", { id: "edge-properties", name: "properties", rows: 2 });
  const addEdge = h(
    "form",
    { class: "card", id: "add-edge" },
    h("h2", {}, "Add an edge"),
    field("Type", edgeType),
    h("div", { class: "row" }, field("From", source), field("To", target)),
    field("Properties (JSON)", edgeProps),
    h("button", { type: "submit" }, "Add edge"),
  );

  function describeSelection() {
    const heading = h("h2", { id: "selection-title" }, "Selection");
    if (!selected) {
      selection.replaceChildren(heading, h("p", {}, "Select a node or an edge in the drawing to see its properties."));
      return;
    }
    const { kind, item } = selected;
    const facts = [
      ["Kind", kind],
      ["Id", item.id],
      ["Type", item.type],
      ...(kind === "edge" ? [["From", item.source], ["To", item.target]] : []),
    ];
    const list = h("dl", {}, ...facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    const atHead = shown?.graph.version === head;
    const parts = [heading, list];
    if (writer && atHead && !archived) {
      const props = h("textarea", { id: "selected-properties", rows: 5 }, JSON.stringify(item.properties, null, 2));
      const save = h("form", { id: "edit-properties" }, field("Properties (JSON)", props), h("button", { type: "submit" }, "Save properties"));
      save.addEventListener("submit", (e) => {
        e.preventDefault();
        submitting(save, async () => {
          const body = { properties: jsonObject(props.value, "Properties") };
          await api("PATCH", `${base}/${kind}s/${seg(item.id)}`, { body });
          await refresh();
        });
      });
      const remove = h("button", { type: "button", id: "remove-selected", class: "danger" }, `Remove ${kind}`);
      remove.addEventListener("click", async () => {
        try {
          await api("DELETE", `${base}/${kind}s/${seg(item.id)}`);
          selected = null;
          await refresh();
        } catch (e) {
          report(e);
        }
      });
      parts.push(save, remove);
    } else {
      parts.push(h("h3", {}, "Properties"), h("pre", { id: "selected-properties" }, JSON.stringify(item.properties, null, 2)));
    }
    selection.replaceChildren(...parts);
  }

  function options(select, nodes) {
    const keep = select.value;
    select.replaceChildren(...nodes.map((n) => h("option", { value: n.id }, `${n.properties?.name ?? n.id} (${n.type})`)));
    if (nodes.some((n) => n.id === keep)) select.value = keep;
  }

  /** Draws the graph as of version `v`. */
  async function showVersion(v) {
    const mine = ++request;
    const snapshot = await api("GET", `${base}/versions/${v}`);
    if (mine !== request) return;
    shown = snapshot;
    if (selected && ![...snapshot.nodes, ...snapshot.edges].some((x) => x.id === selected.item.id)) selected = null;
    draw(drawing, snapshot, (s) => {
      selected = s;
      describeSelection();
    }, selected?.item.id);
    const atHead = v === head;
    counts.textContent = `${plural(snapshot.nodes.length, "node")} and ${plural(snapshot.edges.length, "edge")} drawn, version ${v} of ${head}`;
    history.hidden = atHead;
    for (const form of [addNode, addEdge]) form.querySelectorAll("input, select, textarea, button").forEach((c) => (c.disabled = !atHead || archived));
    options(source, snapshot.nodes);
    options(target, snapshot.nodes);
    find.nodes(snapshot.nodes);
    find.enable(atHead);
    if (atHead) find.redrawn();
    describeSelection();
  }

  /** Reads the graph's head and draws it. */
  async function refresh() {
    const g = await api("GET", base);
    head = g.version;
    archived = g.status === "archived";
    manage?.show(g);
    title.textContent = g.name || "Graph";
    document.title = `${g.name} · CIM console`;
    meta.textContent = `${g.graph_id} · ${g.status}${g.description ? ` · ${g.description}` : ""}`;
    slider.max = String(head);
    slider.value = String(head);
    sliderLabel.textContent = `version ${head}`;
    await showVersion(head);
  }

  /**
   * Another writer (or this one) changed the graph: redraw at the new head, unless an earlier
   * version is on screen, whose drawing stays while the slider's range grows. The gateway's
   * cache may not have seen the event yet when the websocket delivers it: read again until the
   * head reaches the event's version.
   */
  let following = Promise.resolve();
  const follow = (version) => {
    following = following.then(async () => {
      if (version <= head) return;
      for (let attempt = 0; attempt < 10; attempt++) {
        const g = await api("GET", base);
        if (g.version >= version) break;
        await new Promise((r) => setTimeout(r, 100 * (attempt + 1)));
      }
      if (shown && shown.graph.version !== head) {
        const g = await api("GET", base);
        head = g.version;
        slider.max = String(head);
        counts.textContent = counts.textContent.replace(/of \d+$/, `of ${head}`);
      } else {
        await refresh();
      }
    }).catch(report);
  };
  const live = feed({ domain: "graph", aggregate_id: id }, {
    compact: true,
    caption: "This graph's events",
    onEvent: (e) => follow(e.sequence),
  });
  onLeave(live.stop);
  const livePanel = h(
    "section",
    { class: "card", id: "graph-live", "aria-labelledby": "graph-live-title" },
    h("h2", { id: "graph-live-title" }, "Live events"),
    live.element,
  );

  slider.addEventListener("input", () => (sliderLabel.textContent = `version ${slider.value}`));
  slider.addEventListener("change", () => showVersion(Number(slider.value)).catch(report));
  addNode.addEventListener("submit", (e) => {
    e.preventDefault();
    submitting(addNode, async () => {
      const body = { type: nodeType.value, properties: jsonObject(nodeProps.value, "Properties") };
      if (nodeId.value.trim()) body.id = nodeId.value.trim();
      await api("POST", `${base}/nodes`, { body });
      nodeId.value = "";
      nodeProps.value = "";
      await refresh();
    });
  });
  addEdge.addEventListener("submit", (e) => {
    e.preventDefault();
    submitting(addEdge, async () => {
      const body = { type: edgeType.value, source: source.value, target: target.value, properties: jsonObject(edgeProps.value, "Properties") };
      await api("POST", `${base}/edges`, { body });
      edgeProps.value = "";
      await refresh();
    });
  });

  const layout = h(
    "div",
    { class: "graph-layout" },
    h(
      "div",
      { class: "main-column" },
      h(
        "section",
        { class: "canvas", "aria-label": "Drawing" },
        toolbar,
        drawing,
        counts,
        find.answer,
        h("div", { class: "field slider" }, h("label", { for: "version-slider" }, "Version"), slider, sliderLabel),
        history,
      ),
      livePanel,
    ),
    h("div", { class: "side" }, manage?.element, selection, find.element, writer ? addNode : null, writer ? addEdge : null),
  );
  show(
    view,
    "Graph",
    h("p", { class: "crumbs" }, h("a", { href: "#/graphs" }, "Graphs"), " / "),
    title,
    meta,
    layout,
  );
  describeSelection();
  try {
    await refresh();
  } catch (e) {
    // No such graph here (or no access): nothing to draw and nothing to edit.
    layout.remove();
    live.stop();
    report(e);
  }
}
