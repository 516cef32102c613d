// One document's links and compliance. Links (everyone reads them; writers add one:
// POST …/links, to a document id or another domain's aggregate as `<domain>:<id>`). Retention
// (PUT …/retention: it may only be extended) and legal hold (PUT | DELETE …/legal-hold), with
// "Delete for good" (DELETE …?hard=true, pressed twice), are for admins, as the routes require:
// a hold or a retention date in the future makes the service refuse that delete, and the page
// shows its problem. Quarantining a version's content (POST …/versions/{v}/quarantine, with a
// reason: its downloads are refused from then on) is for admins too. Restoring an earlier
// content version is a button on the versions table.

import { api, seg } from "./api.js";
import { field, h, submitting } from "./dom.js";

/** The link types the document service knows (`LinkType` in crates/document/src/domain.rs). */
const LINK_TYPES = ["references", "related", "supersedes", "derived_from", "part_of"];

/** The Links and Compliance cards; `show(document)` follows what was read. */
export function documentCompliance(base, { writer, admin }, changed) {
  const links = h("ul", { class: "links", id: "link-list" });
  const type = h("select", { id: "link-type", name: "link_type" }, ...LINK_TYPES.map((t) => h("option", { value: t }, t.replace("_", " "))));
  const target = h("input", { id: "link-target", name: "target", required: true, autocomplete: "off", placeholder: "document id, or graph:<id>" });
  const linkForm = h("form", { id: "add-link" }, h("div", { class: "row" }, field("Link type", type), field("Target", target)), h("button", { type: "submit" }, "Add link"));
  linkForm.addEventListener("submit", (e) => {
    e.preventDefault();
    submitting(linkForm, async () => {
      await api("POST", `${base}/links`, { body: { link_type: type.value, target: target.value.trim() } });
      target.value = "";
      await changed();
    });
  });
  const linking = h("section", { class: "card", id: "linking", "aria-labelledby": "links-title" }, h("h2", { id: "links-title" }, "Links"), links, writer ? linkForm : null);

  const status = h("p", { id: "compliance-state" });
  const until = h("input", { id: "retain-until", name: "retain_until", type: "datetime-local", step: 60, required: true });
  const retention = h("form", { id: "set-retention" }, field("Retain until (UTC)", until, "may only be extended"), h("button", { type: "submit" }, "Set retention"));
  retention.addEventListener("submit", (e) => {
    e.preventDefault();
    submitting(retention, async () => {
      // datetime-local has no zone (and, at a step of 60 s, no seconds): the page says UTC and sends it so.
      await api("PUT", `${base}/retention`, { body: { retain_until: `${until.value}:00Z` } });
      await changed();
    });
  });
  const reason = h("input", { id: "hold-reason", name: "reason", autocomplete: "off" });
  const hold = h("form", { id: "legal-hold" }, field("Legal hold reason", reason));
  const holdButtons = h("div", { class: "row-line" });
  hold.append(holdButtons);
  const press = (label, id, cls, work) => {
    const b = h("button", { type: "button", id, class: cls }, label);
    b.addEventListener("click", () =>
      submitting(hold, async () => {
        if ((await work(b)) !== false) await changed();
      }),
    );
    return b;
  };
  const suspect = h("select", { id: "quarantine-version", name: "version", required: true });
  const why = h("input", { id: "quarantine-reason", name: "reason", required: true, autocomplete: "off", placeholder: "e.g. malware found" });
  const quarantine = h(
    "form",
    { id: "quarantine" },
    h("div", { class: "row" }, field("Quarantine version", suspect, "its downloads are refused"), field("Reason", why)),
    h("button", { type: "submit", class: "danger" }, "Quarantine"),
  );
  quarantine.addEventListener("submit", (e) => {
    e.preventDefault();
    submitting(quarantine, async () => {
      await api("POST", `${base}/versions/${seg(suspect.value)}/quarantine`, { body: { reason: why.value.trim() } });
      why.value = "";
      await changed();
    });
  });
  let armed = false;
  const compliance = h(
    "section",
    { class: "card", id: "compliance", "aria-labelledby": "compliance-title" },
    h("h2", { id: "compliance-title" }, "Compliance"),
    status,
    admin ? [retention, hold, quarantine] : h("p", { class: "meta" }, "Retention, legal holds and quarantine are set by admins."),
  );

  return {
    elements: [linking, compliance],
    show(d, versions) {
      links.replaceChildren(
        ...(d.links.length
          ? d.links.map((l) => {
              // A bare id is a document of this tenant; `<domain>:<id>` another domain's aggregate.
              const to = l.target.includes(":") ? l.target : h("a", { href: `#/documents/${seg(l.target)}` }, l.target);
              return h("li", { dataset: { linkType: l.link_type } }, `${l.link_type.replace("_", " ")} → `, to);
            })
          : [h("li", { class: "meta" }, "No links.")]),
      );
      const live = !["archived", "deleted"].includes(d.state);
      linkForm.querySelectorAll("input, select, button").forEach((c) => (c.disabled = !live));
      const kept = d.retain_until ? `retained until ${d.retain_until.replace("T", " ").slice(0, 16)} UTC` : "no retention date";
      status.textContent = `${d.legal_hold ? "Under legal hold" : "No legal hold"}; ${kept}.`;
      status.dataset.hold = String(d.legal_hold);
      armed = false;
      holdButtons.replaceChildren(
        d.legal_hold
          ? press("Release hold", "release-hold", "secondary", () => api("DELETE", `${base}/legal-hold`))
          : press("Place hold", "place-hold", "", () => api("PUT", `${base}/legal-hold`, { body: { reason: reason.value.trim() } })),
        press("Delete for good", "purge-document", "danger", async (b) => {
          if (!armed) {
            armed = true;
            b.textContent = "Press again: final";
            return false;
          }
          // Refused (a hold, a retention date), it is disarmed again: the next press asks anew.
          armed = false;
          b.textContent = "Delete for good";
          await api("DELETE", `${base}?hard=true`);
        }),
      );
      reason.value = "";
      const clean = versions.filter((v) => !v.quarantined).reverse();
      suspect.replaceChildren(...clean.map((v) => h("option", { value: String(v.version) }, `${v.version} · ${v.filename || v.cid.slice(0, 12)}`)));
      quarantine.hidden = !clean.length;
    },
  };
}
