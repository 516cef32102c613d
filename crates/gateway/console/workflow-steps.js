// What people do on a workflow instance's steps (writers): approve or reject a step waiting for
// approval (POST …/steps/{step}/approve | reject, with a comment), complete a running manual
// step with its output (POST …/steps/{step}/complete: the output feeds the context), and assign
// a manual or approval step that has not finished to a person (POST …/steps/{step}/assign: the
// assignee may then act on it whatever their roles). The service checks the step's role against
// the session's roles; a refusal is shown as its problem.

import { api, seg } from "./api.js";
import { field, h, jsonObject, submitting } from "./dom.js";

/**
 * Steps meant for people, the final step statuses and the final instance statuses: the workflow
 * service's `StepKind::is_for_people`, `StepStatus::is_finished` and `WorkflowStatus::is_final`,
 * checked against them by crates/gateway/tests/console_rules.rs.
 */
const FOR_PEOPLE = ["manual", "approval"];
const STEP_FINISHED = ["completed", "failed", "skipped", "cancelled"];
const INSTANCE_FINISHED = ["completed", "failed", "cancelled"];

/** The action cell of one step's row; `changed()` after a change. */
export function stepActions(base, step, instanceStatus, changed) {
  const at = `${base}/steps/${seg(step.step_id)}`;
  const id = step.step_id;
  if (!FOR_PEOPLE.includes(step.kind) || STEP_FINISHED.includes(step.status) || INSTANCE_FINISHED.includes(instanceStatus)) {
    return h("td", {});
  }
  const form = h("form", { class: "decide", dataset: { step: id } });
  const button = (verb, label, cls, body) => {
    const b = h("button", { type: "button", class: cls, id: `${verb}-${id}` }, label);
    b.addEventListener("click", () =>
      submitting(form, async () => {
        await api("POST", `${at}/${verb}`, { body: body() });
        await changed();
      }),
    );
    return b;
  };

  // People act only on a running instance; a paused one may still be (re)assigned.
  const running = instanceStatus === "running";
  if (running && step.status === "waiting_approval") {
    const comment = h("input", { id: `comment-${id}`, placeholder: "comment", autocomplete: "off" });
    form.append(
      field(`Comment on ${id}`, comment),
      h("div", { class: "row-line" }, button("approve", "Approve", "", () => ({ comment: comment.value })), button("reject", "Reject", "danger", () => ({ comment: comment.value }))),
    );
  }
  if (running && step.kind === "manual" && step.status === "running") {
    const output = h("textarea", { id: `output-${id}`, rows: 2, placeholder: '{"filed": true}' });
    form.append(
      field(`Output of ${id} (JSON)`, output),
      h("div", { class: "row-line" }, button("complete", "Complete", "", () => ({ output: jsonObject(output.value, "Output") }))),
    );
  }
  const assignee = h("input", { id: `assignee-${id}`, placeholder: "user id", autocomplete: "off", value: step.assignee || "" });
  form.append(
    field(`Assign ${id} to`, assignee),
    h("div", { class: "row-line" }, button("assign", "Assign", "secondary", () => ({ assignee: assignee.value.trim() }))),
  );
  return h("td", {}, form);
}
