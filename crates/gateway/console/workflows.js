// Workflows: definitions (a writer adds one as JSON), instances (filter by status, start one),
// and one instance: its steps with their status and its history as a timeline; what people do
// on steps (approve, reject, complete, assign) in workflow-steps.js; pause, resume, cancel and
// signals in workflow-control.js. The instance page follows its events over the
// live feed.

import { api, seg } from "./api.js";
import { field, h, jsonObject, report, show, submitting, table, time } from "./dom.js";
import { subscribe } from "./live.js";
import { workflowControl } from "./workflow-control.js";
import { stepActions } from "./workflow-steps.js";

const STATUSES = ["", "running", "paused", "completed", "failed", "cancelled"];

export async function workflowsPage({ view, session }) {
  const writer = session.can("writer");
  const definitions = h("tbody", { id: "definition-rows" });
  const instances = h("tbody", { id: "instance-rows" });
  const status = h("select", { id: "instance-status" }, ...STATUSES.map((s) => h("option", { value: s }, s || "any")));
  const choose = h("select", { id: "start-definition", required: true });

  async function loadDefinitions() {
    const page = await api("GET", "/api/v1/workflow-definitions?page_size=100");
    // The list leaves the documents out; their steps are read one definition at a time.
    const full = await Promise.all(
      page.items.map((d) => (d.definition?.steps ? d : api("GET", `/api/v1/workflow-definitions/${seg(d.definition_id)}`))),
    );
    definitions.replaceChildren(
      ...full.map((d) =>
        h("tr", { dataset: { definitionId: d.definition_id } }, h("td", {}, d.name), h("td", {}, (d.definition.steps || []).map((s) => `${s.id} (${s.kind})`).join(" → ")), h("td", { class: "num" }, d.versions.length), h("td", {}, time(d.updated_at))),
      ),
    );
    choose.replaceChildren(...page.items.map((d) => h("option", { value: d.definition_id }, d.name)));
  }
  async function loadInstances() {
    const q = status.value ? `&status=${seg(status.value)}` : "";
    const page = await api("GET", `/api/v1/workflows?page_size=100${q}`);
    instances.replaceChildren(
      ...page.items.map((w) =>
        h("tr", { dataset: { instanceId: w.instance_id } }, h("td", {}, h("a", { href: `#/workflows/${seg(w.instance_id)}` }, w.name)), h("td", {}, w.status), h("td", { class: "num" }, w.version), h("td", {}, time(w.created_at)), h("td", {}, time(w.updated_at))),
      ),
    );
  }
  status.addEventListener("change", () => loadInstances().catch(report));

  const forms = [];
  if (writer) {
    const document = h("textarea", { id: "new-definition", rows: 6, required: true, placeholder: '{"name": "review", "steps": [{"id": "check", "kind": "approval", "role": "admin"}]}' });
    const add = h("form", { class: "card", id: "create-definition" }, h("h2", {}, "New definition"), field("Definition (JSON)", document, "name, description and steps; the service checks it and names what it refuses."), h("button", { type: "submit" }, "Add definition"));
    add.addEventListener("submit", (e) => {
      e.preventDefault();
      submitting(add, async () => {
        await api("POST", "/api/v1/workflow-definitions", { body: { definition: jsonObject(document.value, "Definition") } });
        document.value = "";
        await loadDefinitions();
      });
    });
    const context = h("textarea", { id: "start-context", rows: 2, placeholder: '{"qty": 3}' });
    const start = h("form", { class: "card", id: "start-workflow" }, h("h2", {}, "Start a workflow"), h("div", { class: "row" }, field("Definition", choose), field("Context (JSON)", context)), h("button", { type: "submit" }, "Start"));
    start.addEventListener("submit", (e) => {
      e.preventDefault();
      submitting(start, async () => {
        const r = await api("POST", "/api/v1/workflows", { body: { definition_id: choose.value, context: jsonObject(context.value, "Context") } });
        location.hash = `#/workflows/${seg(r.id)}`;
      });
    });
    forms.push(h("div", { class: "two" }, add, start));
  }

  show(
    view,
    "Workflows",
    h("h1", {}, "Workflows"),
    ...forms,
    h("section", { class: "card", "aria-labelledby": "definitions-title" }, h("h2", { id: "definitions-title" }, "Definitions"), table("Workflow definitions", ["Name", "Steps", "Versions", "Updated (UTC)"], definitions, "definitions")),
    h(
      "section",
      { class: "card", "aria-labelledby": "instances-title" },
      h("h2", { id: "instances-title" }, "Instances"),
      h("div", { class: "row narrow" }, field("Status", status)),
      table("Workflow instances", ["Name", "Status", "Version", "Created (UTC)", "Updated (UTC)"], instances, "instances"),
    ),
  );
  try {
    await Promise.all([loadDefinitions(), loadInstances()]);
  } catch (e) {
    report(e);
  }
}

/** What a history event says about a step, if it names one. */
function describe(e) {
  const p = e.payload || {};
  const said = (x) => (x ? `“${x}”` : "");
  const parts = [p.step, p.name, said(p.comment), said(p.reason), p.error].filter((x) => typeof x === "string" && x);
  return parts.join(" · ");
}

export async function workflowPage({ view, session, onLeave }, id) {
  const base = `/api/v1/workflows/${seg(id)}`;
  const title = h("h1", {}, "Workflow");
  const meta = h("p", { class: "meta", id: "workflow-meta" });
  const steps = h("tbody", { id: "step-rows" });
  const timeline = h("ol", { class: "timeline", id: "timeline" });
  const control = session.can("writer") ? workflowControl(base, () => load()) : null;

  const writer = session.can("writer");
  const columns = ["Step", "Kind", "Status", "After", "Attempts", "Due, error or assignee", "People"];
  let status = "";

  function stepRow(s) {
    const cells = [
      h("td", {}, s.step_id),
      h("td", {}, s.kind),
      h("td", {}, h("span", { class: `status ${s.status}` }, s.status.replace("_", " "))),
      h("td", {}, s.depends_on.join(", ")),
      h("td", { class: "num" }, s.attempts),
      h("td", {}, s.error || time(s.due_at) || s.assignee || ""),
    ];
    const act = writer ? stepActions(base, s, status, () => load()) : h("td", {});
    // Each cell names its column: at phone width the rows stack (console.css), the forms in view.
    [...cells, act].forEach((c, i) => (c.dataset.label = columns[i]));
    return h("tr", { dataset: { step: s.step_id, status: s.status, assignee: s.assignee || "" } }, ...cells, act);
  }

  async function load() {
    const [w, history] = await Promise.all([api("GET", base), api("GET", `${base}/history`)]);
    title.textContent = w.name;
    document.title = `${w.name} · CIM console`;
    meta.textContent = `${w.instance_id} · ${w.status} · version ${w.version}${w.error ? ` · ${w.error}` : ""}`;
    meta.dataset.status = w.status;
    status = w.status;
    control?.show(w);
    steps.replaceChildren(...w.steps.map(stepRow));
    timeline.replaceChildren(
      ...history.events.map((e) =>
        h("li", { dataset: { eventType: e.event_type } }, h("time", {}, time(e.occurred_at)), " ", h("strong", {}, e.event_type.replaceAll("_", " ")), describe(e) ? ` — ${describe(e)}` : "", h("span", { class: "by" }, ` by ${e.actor}`)),
      ),
    );
  }

  // The engine advances the instance by itself: its events redraw the page.
  let pending = null;
  onLeave(subscribe({ domain: "workflow", aggregate_id: id }, () => {
    clearTimeout(pending);
    pending = setTimeout(() => load().catch(report), 150);
  }));
  onLeave(() => clearTimeout(pending));

  const layout = h(
    "div",
    { class: "graph-layout" },
    h("section", { class: "card", "aria-labelledby": "steps-title" }, h("h2", { id: "steps-title" }, "Steps"), table("Steps of this instance", columns, steps, "steps")),
    h(
      "div",
      { class: "side" },
      control?.element,
      h("section", { class: "card", "aria-labelledby": "timeline-title" }, h("h2", { id: "timeline-title" }, "Timeline"), timeline),
    ),
  );
  show(view, "Workflow", h("p", { class: "crumbs" }, h("a", { href: "#/workflows" }, "Workflows"), " / "), title, meta, layout);
  try {
    await load();
  } catch (e) {
    layout.remove();
    report(e);
  }
}
