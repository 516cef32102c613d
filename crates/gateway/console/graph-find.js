// Questions about the graph on screen, answered by the REST API at its latest version: a node's
// neighbours (GET …/nodes/{id}/neighbors) and the shortest path between two nodes
// (GET …/shortest-path). The answer is listed and highlighted in the drawing.

import { api, seg } from "./api.js";
import { field, h, submitting } from "./dom.js";
import { highlight } from "./drawing.js";

const name = (n) => (typeof n.properties?.name === "string" ? n.properties.name : n.id);

function directions(id) {
  return h(
    "select",
    { id, name: "direction" },
    h("option", { value: "out" }, "outgoing edges"),
    h("option", { value: "in" }, "incoming edges"),
    h("option", { value: "both" }, "either way"),
  );
}

/**
 * The "Find" card and its `answer` (placed under the drawing, beside what it highlights);
 * `nodes(list)` refreshes the node choices, `enable(bool)` follows the slider.
 */
export function findPanel(base, drawing) {
  const around = h("select", { id: "find-node", name: "node", required: true });
  const aroundWay = directions("find-direction");
  const neighbours = h(
    "form",
    { id: "find-neighbours" },
    h("h3", {}, "Neighbours"),
    h("div", { class: "row" }, field("Node", around), field("Along", aroundWay)),
    h("button", { type: "submit" }, "Show neighbours"),
  );
  const from = h("select", { id: "path-from", name: "from", required: true });
  const to = h("select", { id: "path-to", name: "to", required: true });
  const pathWay = directions("path-direction");
  // The service bounds a path search at 10 hops.
  const depth = h("input", { id: "path-depth", name: "max_depth", type: "number", min: 1, max: 10, value: 6, required: true });
  const path = h(
    "form",
    { id: "find-path" },
    h("h3", {}, "Path between two nodes"),
    h("div", { class: "row" }, field("From", from), field("To", to)),
    h("div", { class: "row" }, field("Along", pathWay), field("Within hops", depth)),
    h("button", { type: "submit" }, "Find path"),
  );
  const said = h("div", { id: "find-said" });
  const clear = h("button", { type: "button", id: "find-clear", class: "secondary", hidden: true }, "Clear highlight");
  const answer = h("div", { id: "find-answer", role: "status", "aria-live": "polite" }, said, clear);
  const element = h(
    "section",
    { class: "card", id: "find", "aria-labelledby": "find-title" },
    h("h2", { id: "find-title" }, "Find"),
    neighbours,
    path,
  );

  let lit = null; // what the answer highlights, drawn again after a redraw
  function say(summary, items, answerLit) {
    said.replaceChildren(summary ? h("p", { id: "find-summary" }, summary) : "", items.length ? h("ol", { id: "find-items" }, ...items.map((i) => h("li", {}, i))) : "");
    lit = answerLit;
    highlight(drawing, lit);
    clear.hidden = !lit;
  }

  neighbours.addEventListener("submit", (e) => {
    e.preventDefault();
    submitting(neighbours, async () => {
      const r = await api("GET", `${base}/nodes/${seg(around.value)}/neighbors?direction=${aroundWay.value}`);
      const start = around.selectedOptions[0]?.textContent ?? around.value;
      const more = r.truncated ? " (more exist)" : "";
      say(
        `${r.items.length} neighbour${r.items.length === 1 ? "" : "s"} of ${start}${more}`,
        r.items.map((n) => `${name(n.node)} — ${n.via.type} (${n.via.source === around.value ? "out" : "in"})`),
        { origin: around.value, nodes: r.items.map((n) => n.node.id), edges: r.items.map((n) => n.via.id) },
      );
    });
  });
  path.addEventListener("submit", (e) => {
    e.preventDefault();
    submitting(path, async () => {
      const q = `from=${seg(from.value)}&to=${seg(to.value)}&direction=${pathWay.value}&max_depth=${seg(depth.value)}`;
      const r = await api("GET", `${base}/shortest-path?${q}`);
      if (!r.found) {
        const why = r.truncated
          ? "the search reached the server's node bound first; a path may exist"
          : `they are not connected that way within ${depth.value} hops`;
        say(`No path: ${why}.`, [], null);
        return;
      }
      const hops = r.edges.length;
      say(
        `A path of ${hops} hop${hops === 1 ? "" : "s"}: ${r.nodes.map(name).join(" → ")}`,
        r.edges.map((x, i) => `${name(r.nodes[i])} —${x.type}→ ${name(r.nodes[i + 1])}`),
        { origin: from.value, nodes: r.nodes.map((n) => n.id), edges: r.edges.map((x) => x.id) },
      );
    });
  });
  clear.addEventListener("click", () => say("", [], null));

  return {
    element,
    answer,
    nodes(list) {
      for (const select of [around, from, to]) {
        const keep = select.value;
        select.replaceChildren(...list.map((n) => h("option", { value: n.id }, `${name(n)} (${n.type})`)));
        if (list.some((n) => n.id === keep)) select.value = keep;
      }
    },
    /** The drawing was drawn again (a live change): the answer stays highlighted. */
    redrawn() {
      highlight(drawing, lit);
    },
    /** Answers are about the latest version: off while the slider shows an earlier one. */
    enable(on) {
      element.querySelectorAll("select, input, button[type=submit]").forEach((c) => (c.disabled = !on));
      if (!on) say("", [], null);
    },
  };
}
