// Agents by state (counted over the tenant's first 500 agents) and the tenant's tasks, newest
// first, optionally in one state; select an agent to see the tasks it holds or last held among
// those listed. The REST API lists tasks by state only, so an agent's tasks are picked from the
// page read, and the page says so. A writer deploys agents and moves them through their
// lifecycle (agent-actions.js) and configures them (agent-config.js).

import { api, seg } from "./api.js";
import { field, h, report, show, table, time } from "./dom.js";
import { agentActions, deployForm } from "./agent-actions.js";
import { agentConfig } from "./agent-config.js";

const AGENT_STATES = ["active", "deployed", "suspended", "offline", "decommissioned"];
const TASK_STATES = ["", "queued", "assigned", "completed", "failed", "cancelled", "timed_out"];
const LIMIT = 500;

export async function agentsPage({ view, session }) {
  const writer = session.can("writer");
  let agents = [];
  let tasks = [];
  let state = "";
  let holder = null;
  const tabs = h("div", { class: "tabs", role: "group", "aria-label": "Agents by state", id: "agent-states" });
  const agentRows = h("tbody", { id: "agent-rows" });
  const taskRows = h("tbody", { id: "task-rows" });
  const taskState = h("select", { id: "task-state" }, ...TASK_STATES.map((s) => h("option", { value: s }, s || "any")));
  const scope = h("p", { class: "meta", id: "task-scope", role: "status" });
  const names = () => new Map(agents.map((a) => [a.agent_id, a.name]));
  const config = writer ? agentConfig(session.can("admin"), () => loadAgents()) : null;

  function drawTabs() {
    const count = (s) => agents.filter((a) => !s || a.state === s).length;
    const tab = (s, label) => {
      const b = h("button", { type: "button", "aria-pressed": String(state === s), dataset: { state: s || "all" } }, `${label} (${count(s)})`);
      b.addEventListener("click", () => {
        state = s;
        drawTabs();
        drawAgents();
      });
      return b;
    };
    tabs.replaceChildren(tab("", "All"), ...AGENT_STATES.map((s) => tab(s, s)));
  }

  function drawAgents() {
    const shown = agents.filter((a) => !state || a.state === state);
    agentRows.replaceChildren(
      ...shown.map((a) => {
        const pick = h("button", { type: "button", class: "link", "aria-pressed": String(holder === a.agent_id), id: `agent-${a.agent_id}` }, a.name);
        pick.addEventListener("click", () => {
          holder = holder === a.agent_id ? null : a.agent_id;
          drawAgents();
          drawTasks();
        });
        return h(
          "tr",
          { dataset: { agentId: a.agent_id, state: a.state, name: a.name } },
          h("td", {}, pick),
          h("td", {}, a.agent_type),
          h("td", {}, h("span", { class: `status ${a.state}` }, a.state)),
          h("td", {}, a.capabilities.join(", ")),
          h("td", { class: "num" }, `${a.running_tasks} / ${a.max_concurrent_tasks}`),
          h("td", {}, time(a.updated_at)),
          writer ? h("td", {}, agentActions(a, session.can("admin"), loadAgents)) : null,
        );
      }),
    );
  }

  function drawTasks() {
    const who = names();
    const shown = tasks.filter((t) => !holder || t.holder === holder);
    scope.textContent = holder
      ? `Tasks ${who.get(holder)} holds or last held, among the ${tasks.length} latest${taskState.value ? ` ${taskState.value}` : ""} tasks. Select the agent again for all.`
      : `The ${tasks.length} latest${taskState.value ? ` ${taskState.value}` : ""} tasks, newest first.`;
    taskRows.replaceChildren(
      ...shown.map((t) =>
        h(
          "tr",
          { dataset: { taskId: t.task_id, state: t.state } },
          h("td", {}, t.task_id),
          h("td", {}, h("span", { class: `status ${t.state}` }, t.state.replace("_", " "))),
          h("td", { class: "num" }, t.priority),
          h("td", {}, t.holder ? who.get(t.holder) || t.holder : ""),
          h("td", { class: "num" }, t.attempts),
          h("td", {}, t.required_capabilities.join(", ")),
          h("td", {}, t.error || (t.result ? JSON.stringify(t.result) : "")),
          h("td", {}, time(t.updated_at)),
        ),
      ),
    );
  }

  async function loadTasks() {
    const q = taskState.value ? `&state=${seg(taskState.value)}` : "";
    tasks = (await api("GET", `/api/v1/tasks?page_size=${LIMIT}${q}`)).items;
    drawTasks();
  }
  taskState.addEventListener("change", () => loadTasks().catch(report));

  async function loadAgents() {
    agents = (await api("GET", `/api/v1/agents?page_size=${LIMIT}`)).items;
    drawTabs();
    drawAgents();
    config?.show(agents);
  }

  show(
    view,
    "Agents",
    h("h1", {}, "Agents"),
    writer ? deployForm(loadAgents) : null,
    h(
      "section",
      { class: "card", "aria-labelledby": "agents-title" },
      h("h2", { id: "agents-title" }, "Agents by state"),
      tabs,
      table("Agents", ["Name (select for its tasks)", "Type", "State", "Capabilities", "Tasks held / limit", "Updated (UTC)", ...(writer ? ["Lifecycle"] : [])], agentRows, "agents"),
    ),
    config?.element,
    h(
      "section",
      { class: "card", "aria-labelledby": "tasks-title" },
      h("h2", { id: "tasks-title" }, "Tasks"),
      h("div", { class: "row narrow" }, field("State", taskState)),
      scope,
      table("Tasks", ["Task", "State", "Priority", "Agent", "Attempts", "Needs", "Result or error", "Updated (UTC)"], taskRows, "tasks"),
    ),
  );
  try {
    await loadAgents();
    await loadTasks();
  } catch (e) {
    report(e);
  }
}
