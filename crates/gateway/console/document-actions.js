// One document's changes (writers): its review state (POST …/state), archive, soft delete and
// restore (POST …/archive, DELETE …, POST …/restore), its tags (PATCH …?expected_version=,
// which replaces the whole record, so title, description and metadata are sent back as read,
// over the version read) and a content
// version's tag (POST …/versions/{v}/tags, which moves the tag there from any other version).

import { api, seg } from "./api.js";
import { field, h, report, submitting } from "./dom.js";

/**
 * The review transitions offered from each state: the document service's rule
 * (`State::may_become` in crates/document/src/domain.rs), checked against it by
 * crates/gateway/tests/console_rules.rs. Archived and deleted documents have none (restore).
 */
const REVIEW = {
  draft: ["in_review"],
  in_review: ["approved", "rejected", "draft"],
  approved: ["draft"],
  rejected: ["draft"],
};
const REVIEW_LABELS = { in_review: "Submit for review", approved: "Approve", rejected: "Reject", draft: "Back to draft" };
const LIVE = new Set(Object.keys(REVIEW));

/** The lifecycle and tags cards; `show(document, versions)` follows what was read. */
export function documentActions(base, changed) {
  const reason = h("input", { id: "state-reason", name: "reason", autocomplete: "off" });
  const moves = h("div", { class: "row-line", id: "state-actions" });
  const lifecycle = h(
    "section",
    { class: "card", id: "lifecycle", "aria-labelledby": "lifecycle-title" },
    h("h2", { id: "lifecycle-title" }, "Lifecycle"),
    h("p", { id: "lifecycle-state" }),
    field("Reason (optional, recorded with a review change)", reason),
    moves,
  );
  const tags = h("input", { id: "document-tags", name: "tags", autocomplete: "off" });
  const tagForm = h("form", { id: "edit-tags" }, field("Tags", tags, "separated by commas"), h("button", { type: "submit" }, "Save tags"));
  const which = h("select", { id: "tag-version", name: "version", required: true });
  const versionTag = h("input", { id: "version-tag", name: "tag", required: true, pattern: "[A-Za-z0-9._\\-]{1,64}", autocomplete: "off" });
  const versionForm = h(
    "form",
    { id: "tag-version-form" },
    h("div", { class: "row" }, field("Version", which), field("Tag", versionTag, "e.g. v1.0; moves it from another version")),
    h("button", { type: "submit" }, "Tag version"),
  );
  const tagging = h("section", { class: "card", id: "tagging", "aria-labelledby": "tagging-title" }, h("h2", { id: "tagging-title" }, "Tags"), tagForm, versionForm);
  let doc = null;

  const act = (label, id, cls, work) =>
    h("button", {
      type: "button",
      id,
      class: cls,
      onclick: async (e) => {
        const button = e.currentTarget;
        button.disabled = true;
        try {
          await work();
          reason.value = "";
          await changed();
        } catch (err) {
          report(err);
          button.disabled = false;
        }
      },
    }, label);

  tagForm.addEventListener("submit", (e) => {
    e.preventDefault();
    submitting(tagForm, async () => {
      const list = tags.value.split(",").map((t) => t.trim()).filter(Boolean);
      const body = { title: doc.title, description: doc.description, tags: list, metadata: doc.metadata };
      // The record is replaced whole, so it is sent only over the version it was read at: a
      // change made meanwhile is refused (409), read again, and the typed tags kept to save again.
      try {
        await api("PATCH", `${base}?expected_version=${doc.version}`, { body });
      } catch (err) {
        if (err.status === 409) {
          const typed = tags.value;
          await changed();
          tags.value = typed;
        }
        throw err;
      }
      await changed();
    });
  });
  versionForm.addEventListener("submit", (e) => {
    e.preventDefault();
    submitting(versionForm, async () => {
      await api("POST", `${base}/versions/${seg(which.value)}/tags`, { body: { tag: versionTag.value.trim() } });
      versionTag.value = "";
      await changed();
    });
  });

  return {
    elements: [lifecycle, tagging],
    show(d, versions) {
      doc = d;
      const live = LIVE.has(d.state);
      lifecycle.dataset.state = d.state;
      lifecycle.querySelector("#lifecycle-state").textContent = live
        ? `State: ${d.state.replace("_", " ")}.`
        : `State: ${d.state}: readable, and every change is refused until it is restored.`;
      const review = (REVIEW[d.state] || []).map((to) =>
        act(REVIEW_LABELS[to], `state-${to}`, to === "rejected" ? "danger" : "", () => api("POST", `${base}/state`, { body: { state: to, reason: reason.value.trim() } })),
      );
      const other = live
        ? [act("Archive", "archive-document", "secondary", () => api("POST", `${base}/archive`)), act("Delete (restorable)", "delete-document", "danger", () => api("DELETE", base))]
        : [act("Restore", "restore-document", "", () => api("POST", `${base}/restore`))];
      moves.replaceChildren(...review, ...other);
      reason.parentElement.hidden = !review.length;
      if (document.activeElement !== tags) tags.value = d.tags.join(", ");
      const keep = which.value;
      which.replaceChildren(...versions.slice().reverse().map((v) => h("option", { value: v.version }, `version ${v.version} · ${v.filename || "(no name)"}`)));
      if (versions.some((v) => String(v.version) === keep)) which.value = keep;
      tagging.querySelectorAll("input, select, button").forEach((c) => (c.disabled = !live));
      versionForm.hidden = !versions.length;
    },
  };
}
