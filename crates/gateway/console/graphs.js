// The tenant's graphs: a page at a time, and a form to create one (writers).

import { api } from "./api.js";
import { field, h, report, show, submitting } from "./dom.js";

function row(g) {
  return h(
    "tr",
    { dataset: { graphId: g.graph_id } },
    h("td", {}, h("a", { href: `#/graphs/${encodeURIComponent(g.graph_id)}` }, g.name || g.graph_id)),
    h("td", { class: "num" }, g.node_count),
    h("td", { class: "num" }, g.edge_count),
    h("td", { class: "num" }, g.version),
    h("td", {}, g.status),
    h("td", {}, (g.updated_at || "").replace("T", " ").slice(0, 19)),
  );
}

export async function graphsPage({ view, session }) {
  const body = h("tbody", { id: "graph-rows" });
  const empty = h("p", { id: "no-graphs", hidden: true }, "No graphs yet.");
  const more = h("button", { type: "button", id: "more-graphs", hidden: true }, "More");
  let token = null;
  async function load() {
    const q = token ? `&page_token=${encodeURIComponent(token)}` : "";
    const page = await api("GET", `/api/v1/graphs?page_size=50${q}`);
    body.append(...page.items.map(row));
    token = page.next_page_token || null;
    more.hidden = !token;
    empty.hidden = body.children.length > 0;
  }
  more.addEventListener("click", () => load().catch(report));

  let create = null;
  if (session.can("writer")) {
    const name = h("input", { id: "new-graph-name", name: "name", required: true, maxlength: 200 });
    const description = h("input", { id: "new-graph-description", name: "description" });
    create = h(
      "form",
      { class: "card", id: "create-graph" },
      h("h2", {}, "New graph"),
      h("div", { class: "row" }, field("Name", name), field("Description", description)),
      h("button", { type: "submit" }, "Create graph"),
    );
    create.addEventListener("submit", (e) => {
      e.preventDefault();
      submitting(create, async () => {
        const r = await api("POST", "/api/v1/graphs", { body: { name: name.value, description: description.value } });
        location.hash = `#/graphs/${encodeURIComponent(r.graph_id)}`;
      });
    });
  }

  const table = h(
    "table",
    { class: "list" },
    h("caption", { class: "sr" }, "Graphs of this tenant"),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ...["Name", "Nodes", "Edges", "Version", "Status", "Updated (UTC)"].map((c) => h("th", { scope: "col" }, c)),
      ),
    ),
    body,
  );
  show(view, "Graphs", h("h1", {}, "Graphs"), create, h("div", { class: "scroll" }, table), empty, more);
  try {
    await load();
  } catch (e) {
    report(e);
  }
}
