// Agents' changes: a writer deploys one (POST /api/v1/agents, then its capabilities with
// PUT …/capabilities) and moves one through its lifecycle (POST …/activate, …/suspend,
// …/offline; …/decommission for admins, final, so pressed twice).

import { api, seg } from "./api.js";
import { field, h, report, submitting } from "./dom.js";

const TYPES = ["human", "ai", "system", "external"];

/**
 * What each state offers: the agent service's rule (`AgentState::may_become`: activate from
 * deployed, suspended or offline; suspend from active or offline; offline from active;
 * decommission from any but decommissioned), checked against it by
 * crates/gateway/tests/console_rules.rs. Anything else it would refuse with a problem shown.
 */
const OFFERED = {
  deployed: ["activate"],
  active: ["suspend", "offline"],
  suspended: ["activate"],
  offline: ["activate", "suspend"],
};
const LABELS = { activate: "Activate", suspend: "Suspend", offline: "Mark offline", decommission: "Decommission" };

/** The "Deploy an agent" form; `deployed()` after one is deployed. */
export function deployForm(deployed) {
  const name = h("input", { id: "deploy-name", name: "name", required: true, autocomplete: "off" });
  const type = h("select", { id: "deploy-type", name: "agent_type" }, ...TYPES.map((t) => h("option", { value: t }, t)));
  const limit = h("input", { id: "deploy-limit", name: "max_concurrent_tasks", type: "number", min: 1, max: 1000, value: 1, required: true });
  const capabilities = h("input", { id: "deploy-capabilities", name: "capabilities", autocomplete: "off" });
  const form = h(
    "form",
    { class: "card", id: "deploy-agent" },
    h("h2", {}, "Deploy an agent"),
    h("div", { class: "row" }, field("Name", name), field("Type", type), field("Tasks at once", limit), field("Capabilities", capabilities, "separated by commas")),
    h("button", { type: "submit" }, "Deploy"),
    h("p", { class: "meta" }, "A deployed agent gets no task until it is activated; an AI agent needs a model first (Configure an agent, below)."),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    submitting(form, async () => {
      const body = { name: name.value.trim(), agent_type: type.value, max_concurrent_tasks: Number(limit.value) };
      const made = await api("POST", "/api/v1/agents", { body });
      const list = capabilities.value.split(",").map((c) => c.trim()).filter(Boolean);
      if (list.length) await api("PUT", `/api/v1/agents/${seg(made.agent_id)}/capabilities`, { body: { capabilities: list } });
      name.value = "";
      capabilities.value = "";
      await deployed();
    });
  });
  return form;
}

/** The lifecycle buttons for one agent's row; `changed()` after a change. */
export function agentActions(agent, admin, changed) {
  const verbs = [...(OFFERED[agent.state] || []), ...(admin && agent.state !== "decommissioned" ? ["decommission"] : [])];
  const cell = h("div", { class: "row-line actions" });
  for (const verb of verbs) {
    const b = h("button", { type: "button", id: `${verb}-${agent.agent_id}`, class: verb === "decommission" ? "danger" : "secondary", "aria-label": `${LABELS[verb]} ${agent.name}` }, LABELS[verb]);
    let armed = false;
    b.addEventListener("click", () =>
      submitting(cell, async () => {
        if (verb === "decommission" && !armed) {
          armed = true;
          b.textContent = "Press again: final";
          return;
        }
        const body = verb === "activate" || verb === "decommission" ? undefined : { reason: "" };
        await api("POST", `/api/v1/agents/${seg(agent.agent_id)}/${verb}`, { body });
        await changed();
      }),
    );
    cell.append(b);
  }
  return cell;
}
