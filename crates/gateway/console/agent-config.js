// One agent's configuration (writers): an AI agent's model (PUT …/model) and system prompt
// (PUT …/system-prompt), its tools (POST …/tools/enable | disable), capabilities (PUT
// …/capabilities, the whole set) and tasks at once (PUT …/concurrency-limit); its permissions
// (POST …/permissions/grant | revoke) for admins only, as the routes require. The agent service
// decides: what it refuses (a model for a human agent, a name that is not dotted snake_case, an
// unchanged value) is shown as its problem, as is activating an AI agent without a model.

import { api, seg } from "./api.js";
import { field, h, jsonObject, submitting } from "./dom.js";

const names = (text) => text.split(",").map((n) => n.trim()).filter(Boolean);

/** The "Configure an agent" card; `show(agents)` after the list is read; `changed()` after a change. */
export function agentConfig(admin, changed) {
  const choose = h("select", { id: "config-agent", name: "agent" });
  const current = h("dl", { class: "facts", id: "config-current" });
  let agent = null;

  const provider = h("input", { id: "model-provider", name: "provider", required: true, autocomplete: "off", placeholder: "ollama" });
  const model = h("input", { id: "model-name", name: "model", required: true, autocomplete: "off", placeholder: "llama3:8b" });
  const parameters = h("textarea", { id: "model-parameters", name: "parameters", rows: 2, placeholder: '{"temperature": 0.2}' });
  const modelForm = h("form", { id: "config-model" }, h("h3", {}, "Model (AI agents)"), h("div", { class: "row" }, field("Provider", provider), field("Model", model)), field("Parameters (JSON)", parameters), h("button", { type: "submit" }, "Save model"));
  const prompt = h("textarea", { id: "system-prompt", name: "system_prompt", rows: 3 });
  const promptForm = h("form", { id: "config-prompt" }, h("h3", {}, "System prompt (AI agents)"), field("System prompt", prompt), h("button", { type: "submit" }, "Save prompt"));
  const tools = h("input", { id: "tool-names", name: "tools", autocomplete: "off", required: true });
  const toolForm = h("form", { id: "config-tools" }, h("h3", {}, "Tools"), field("Tool names", tools, "separated by commas, e.g. web.search"));
  const permissions = h("input", { id: "permission-names", name: "permissions", autocomplete: "off", required: true });
  const permissionForm = h("form", { id: "config-permissions" }, h("h3", {}, "Permissions (admins)"), field("Permission names", permissions, "separated by commas, e.g. documents.read"));
  const capabilities = h("input", { id: "config-capabilities", name: "capabilities", autocomplete: "off" });
  const limit = h("input", { id: "config-limit", name: "max_concurrent_tasks", type: "number", min: 1, max: 1000, required: true });
  const workForm = h("form", { id: "config-work" }, h("h3", {}, "Work"), h("div", { class: "row" }, field("Capabilities", capabilities, "the whole set, separated by commas"), field("Tasks at once", limit)), h("button", { type: "submit" }, "Save capabilities and limit"));

  const path = (rest) => `/api/v1/agents/${seg(agent.agent_id)}/${rest}`;
  const save = (form, work) =>
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      if (agent) submitting(form, async () => (await work(), await changed()));
    });
  save(modelForm, () => api("PUT", path("model"), { body: { provider: provider.value.trim(), model: model.value.trim(), parameters: jsonObject(parameters.value, "Parameters") } }));
  save(promptForm, () => api("PUT", path("system-prompt"), { body: { system_prompt: prompt.value } }));
  save(workForm, async () => {
    await api("PUT", path("capabilities"), { body: { capabilities: names(capabilities.value) } });
    if (Number(limit.value) !== agent.max_concurrent_tasks) {
      await api("PUT", path("concurrency-limit"), { body: { max_concurrent_tasks: Number(limit.value) } });
    }
  });
  // Two verbs on one list of names: each button sends what the field holds.
  const pair = (form, input, kind, verbs) => {
    const buttons = verbs.map(([verb, label, cls]) => {
      const b = h("button", { type: "button", id: `${kind}-${verb}`, class: cls }, label);
      b.addEventListener("click", () => {
        if (!agent || !form.reportValidity()) return;
        submitting(form, async () => {
          await api("POST", path(`${kind}/${verb}`), { body: { names: names(input.value) } });
          input.value = "";
          await changed();
        });
      });
      return b;
    });
    form.append(h("div", { class: "row-line" }, ...buttons));
  };
  pair(toolForm, tools, "tools", [["enable", "Enable", ""], ["disable", "Disable", "secondary"]]);
  pair(permissionForm, permissions, "permissions", [["grant", "Grant", ""], ["revoke", "Revoke", "danger"]]);

  const element = h(
    "section",
    { class: "card", id: "agent-config", "aria-labelledby": "config-title" },
    h("h2", { id: "config-title" }, "Configure an agent"),
    h("div", { class: "row narrow" }, field("Agent", choose)),
    current,
    h("div", { class: "two" }, h("div", {}, modelForm, promptForm), h("div", {}, toolForm, admin ? permissionForm : null, workForm)),
  );

  function draw() {
    const fact = (term, value) => [h("dt", {}, term), h("dd", { dataset: { fact: term.toLowerCase() } }, value || "—")];
    const ai = agent?.agent_type === "ai";
    element.querySelectorAll("form").forEach((f) => (f.hidden = !agent));
    modelForm.hidden = promptForm.hidden = !ai;
    if (!agent) {
      current.replaceChildren(h("dd", {}, "No agent to configure."));
      return;
    }
    const m = agent.model;
    current.replaceChildren(
      ...fact("State", `${agent.state} (${agent.agent_type})`),
      ...(ai ? fact("Model", m ? `${m.provider} · ${m.model}${Object.keys(m.parameters || {}).length ? ` · ${JSON.stringify(m.parameters)}` : ""}` : "none: activating is refused until one is set") : []),
      ...(ai ? fact("Prompt", agent.system_prompt.split("\n")[0]) : []),
      ...fact("Tools", agent.tools.join(", ")),
      ...fact("Permissions", agent.permissions.join(", ")),
    );
    if (document.activeElement !== capabilities) capabilities.value = agent.capabilities.join(", ");
    if (document.activeElement !== limit) limit.value = agent.max_concurrent_tasks;
    if (m && !provider.value) {
      provider.value = m.provider;
      model.value = m.model;
      parameters.value = Object.keys(m.parameters || {}).length ? JSON.stringify(m.parameters) : "";
    }
    if (ai && !prompt.value) prompt.value = agent.system_prompt;
  }

  let agents = [];
  choose.addEventListener("change", () => {
    agent = agents.find((a) => a.agent_id === choose.value) || null;
    provider.value = model.value = parameters.value = prompt.value = "";
    draw();
  });

  return {
    element,
    show(list) {
      agents = list.filter((a) => a.state !== "decommissioned");
      const keep = agent?.agent_id;
      choose.replaceChildren(...agents.map((a) => h("option", { value: a.agent_id }, `${a.name} (${a.agent_type}, ${a.state})`)));
      agent = agents.find((a) => a.agent_id === keep) || agents[0] || null;
      if (agent) choose.value = agent.agent_id;
      draw();
    },
  };
}
