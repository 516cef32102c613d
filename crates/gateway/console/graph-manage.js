// A graph's own changes (writers): rename (PATCH /api/v1/graphs/{id}) and archive
// (DELETE /api/v1/graphs/{id}). An archived graph stays readable and refuses every change, so
// archiving asks to be pressed twice.

import { api } from "./api.js";
import { field, h, report, submitting } from "./dom.js";

/**
 * "This graph", folded away until opened (rare changes); `show(graph)` follows the graph read;
 * `changed()` after a change.
 */
export function managePanel(base, changed) {
  const name = h("input", { id: "graph-name", name: "name", required: true, autocomplete: "off" });
  const rename = h("form", { id: "rename-graph" }, field("Name", name), h("button", { type: "submit" }, "Rename"));
  const archive = h("button", { type: "button", id: "archive-graph", class: "danger" }, "Archive graph");
  const note = h("p", { class: "meta", id: "archive-note" }, "Archived, it stays readable and refuses every change.");
  const element = h(
    "details",
    { class: "card", id: "manage-graph" },
    h("summary", { id: "manage-title" }, "This graph: rename or archive"),
    rename,
    archive,
    note,
  );
  let armed = false;
  const disarm = () => {
    armed = false;
    archive.textContent = "Archive graph";
  };

  rename.addEventListener("submit", (e) => {
    e.preventDefault();
    submitting(rename, async () => {
      await api("PATCH", base, { body: { name: name.value.trim() } });
      await changed();
    });
  });
  archive.addEventListener("click", async () => {
    if (!armed) {
      armed = true;
      archive.textContent = "Press again to archive";
      return;
    }
    disarm();
    try {
      await api("DELETE", base);
      await changed();
    } catch (e) {
      report(e);
    }
  });
  archive.addEventListener("blur", disarm);

  return {
    element,
    show(graph) {
      if (document.activeElement !== name) name.value = graph.name;
      const archived = graph.status === "archived";
      element.querySelectorAll("input, button").forEach((c) => (c.disabled = archived));
      note.textContent = archived ? "Archived: readable, and every change is refused." : "Archived, it stays readable and refuses every change.";
    },
  };
}
