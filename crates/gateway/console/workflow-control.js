// One workflow instance's controls (writers): pause, resume and cancel with a reason
// (POST …/pause, …/resume, …/cancel), and a signal with a JSON payload
// (POST …/signals/{name}: kept in the context under `signals.<name>`, and delivered to a step
// waiting for it).

import { api, seg } from "./api.js";
import { field, h, jsonObject, report, submitting } from "./dom.js";

/**
 * What each status offers: the workflow service's rule (crates/workflow/src/instance.rs:
 * running → paused | cancelled, paused → running | cancelled, a draft may be cancelled;
 * completed, failed and cancelled are final), checked against its `decide` by
 * crates/gateway/tests/console_rules.rs. Anything else it would refuse with a problem shown.
 */
const OFFERED = {
  draft: ["cancel"],
  running: ["pause", "cancel"],
  paused: ["resume", "cancel"],
};
const LABELS = { pause: "Pause", resume: "Resume", cancel: "Cancel workflow" };

/** The "Control" card; `show(instance)` follows what was read; `changed()` after a change. */
export function workflowControl(base, changed) {
  const reason = h("input", { id: "control-reason", name: "reason", autocomplete: "off" });
  const moves = h("div", { class: "row-line", id: "control-actions" });
  const state = h("p", { id: "control-state" });
  const name = h("input", { id: "signal-name", name: "name", required: true, autocomplete: "off" });
  const payload = h("textarea", { id: "signal-payload", name: "payload", rows: 2, placeholder: '{"approved_by": "alice"}' });
  const signal = h(
    "form",
    { id: "send-signal" },
    h("h3", {}, "Send a signal"),
    field("Signal name", name, "e.g. go_ahead"),
    field("Payload (JSON)", payload),
    h("button", { type: "submit" }, "Send signal"),
  );
  const element = h(
    "section",
    { class: "card", id: "workflow-control", "aria-labelledby": "control-title" },
    h("h2", { id: "control-title" }, "Control"),
    state,
    field("Reason (optional, recorded)", reason),
    moves,
    signal,
  );

  const act = (verb) =>
    h("button", {
      type: "button",
      id: `workflow-${verb}`,
      class: verb === "cancel" ? "danger" : "",
      onclick: async (e) => {
        const button = e.currentTarget;
        button.disabled = true;
        try {
          await api("POST", `${base}/${verb}`, { body: { reason: reason.value.trim() } });
          reason.value = "";
          await changed();
        } catch (err) {
          report(err);
          button.disabled = false;
        }
      },
    }, LABELS[verb]);

  signal.addEventListener("submit", (e) => {
    e.preventDefault();
    submitting(signal, async () => {
      const body = { payload: jsonObject(payload.value, "Payload") };
      await api("POST", `${base}/signals/${seg(name.value.trim())}`, { body });
      payload.value = "";
      await changed();
    });
  });

  return {
    element,
    show(w) {
      const offered = OFFERED[w.status] || [];
      state.textContent = offered.length ? `Status: ${w.status}.` : `Status: ${w.status}: nothing more to control.`;
      moves.replaceChildren(...offered.map(act));
      reason.parentElement.hidden = !offered.length;
      signal.hidden = !offered.length;
    },
  };
}
