// Documents: search and list, a writer's new document with its first content (the upload's
// progress shown as it goes: XMLHttpRequest reports upload progress, fetch does not), and one
// document: its details, every content version with its tags, a download link and a signed
// link to share (no sign-in needed for an hour), a new
// version or an earlier one restored, (document-actions.js) its lifecycle and tags, and
// (document-compliance.js) its links, retention and legal hold.

import { Problem, api, seg } from "./api.js";
import { clearReport, field, h, report, show, submitting, table, time } from "./dom.js";
import { documentActions } from "./document-actions.js";
import { documentCompliance } from "./document-compliance.js";

function size(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/**
 * PUTs `file` as the document's next content version, calling `onProgress(sent, total)`;
 * answers the command result or throws the API's Problem. A 401 goes to sign in like `api`.
 */
function upload(documentId, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", `/api/v1/documents/${seg(documentId)}/content?filename=${encodeURIComponent(file.name)}`);
    xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
    xhr.onerror = () => reject(new Problem(0, "Gateway unreachable", "the upload broke off"));
    xhr.onload = () => {
      let json = null;
      try {
        json = JSON.parse(xhr.responseText);
      } catch {
        // an empty or non-JSON answer
      }
      if (xhr.status >= 200 && xhr.status < 300) return resolve(json);
      const problem = new Problem(xhr.status, json?.title || xhr.statusText, json?.detail || "");
      if (xhr.status === 401) window.dispatchEvent(new CustomEvent("cim:unauthenticated", { detail: problem }));
      reject(problem);
    };
    xhr.send(file);
  });
}

/** A file field, a progress bar and its label; `send(documentId)` uploads the chosen file. */
function uploader(id) {
  const file = h("input", { type: "file", id: `${id}-file`, required: true });
  const bar = h("progress", { id: `${id}-progress`, max: 100, value: 0, hidden: true });
  const label = h("span", { id: `${id}-progress-label`, role: "status" });
  return {
    field: field("File", file),
    progress: h("div", { class: "row-line" }, bar, label),
    async send(documentId) {
      const chosen = file.files[0];
      bar.hidden = false;
      bar.value = 0;
      const result = await upload(documentId, chosen, (sent, total) => {
        bar.value = total ? Math.round((sent / total) * 100) : 0;
        label.textContent = `${size(sent)} of ${size(total)} sent`;
      });
      bar.value = 100;
      label.textContent = `${chosen.name}: ${size(chosen.size)} stored as version ${result.content_version}`;
      return result;
    },
  };
}

export async function documentsPage({ view, session }) {
  const rows = h("tbody", { id: "document-rows" });
  const query = h("input", { id: "document-query", type: "search", placeholder: "words in the title, description or text" });
  const search = h("form", { class: "row-line", id: "document-search", role: "search" }, field("Search", query), h("button", { type: "submit" }, "Search"));
  async function load() {
    const q = query.value.trim() ? `&q=${encodeURIComponent(query.value.trim())}` : "";
    const page = await api("GET", `/api/v1/documents?page_size=50${q}`);
    rows.replaceChildren(
      ...page.items.map((d) =>
        h(
          "tr",
          { dataset: { documentId: d.document_id } },
          h("td", {}, h("a", { href: `#/documents/${seg(d.document_id)}` }, d.title)),
          h("td", {}, d.state),
          h("td", {}, d.current ? `${d.current.filename || "(no name)"} · v${d.current.version}` : "no content"),
          h("td", { class: "num" }, d.current ? size(d.current.size) : ""),
          h("td", {}, time(d.updated_at)),
        ),
      ),
    );
  }
  search.addEventListener("submit", (e) => {
    e.preventDefault();
    load().catch(report);
  });

  let create = null;
  if (session.can("writer")) {
    const title = h("input", { id: "new-document-title", required: true, maxlength: 500 });
    const description = h("input", { id: "new-document-description" });
    const content = uploader("new-document");
    create = h(
      "form",
      { class: "card", id: "create-document" },
      h("h2", {}, "New document"),
      h("div", { class: "row" }, field("Title", title), field("Description", description), content.field),
      h("button", { type: "submit" }, "Create and upload"),
      content.progress,
    );
    create.addEventListener("submit", (e) => {
      e.preventDefault();
      submitting(create, async () => {
        const made = await api("POST", "/api/v1/documents", { body: { title: title.value, description: description.value } });
        await content.send(made.document_id);
        await load();
      });
    });
  }
  show(
    view,
    "Documents",
    h("h1", {}, "Documents"),
    create,
    h("section", { class: "card", "aria-labelledby": "documents-title" }, h("h2", { id: "documents-title" }, "Documents"), search, table("Documents of this tenant", ["Title", "State", "Current content", "Size", "Updated (UTC)"], rows, "documents")),
  );
  try {
    await load();
  } catch (e) {
    report(e);
  }
}

export async function documentPage({ view, session }, id) {
  const base = `/api/v1/documents/${seg(id)}`;
  const title = h("h1", {}, "Document");
  const meta = h("p", { class: "meta", id: "document-meta" });
  const versions = h("tbody", { id: "version-rows" });
  const next = uploader("next-version");
  const form = h("form", { class: "card", id: "upload-version" }, h("h2", {}, "Upload a new version"), next.field, h("button", { type: "submit" }, "Upload"), next.progress);
  const writer = session.can("writer");
  const actions = writer ? documentActions(base, () => load()) : null;
  const compliance = documentCompliance(base, { writer, admin: session.can("admin") }, () => load());

  // A signed link to one version (POST …/download-links): it downloads with no credentials
  // for an hour, so it can be handed to someone without an account. Shown once, to copy.
  const shared = h("p", { id: "share-link", role: "status", hidden: true });
  function shareButton(x) {
    const b = h("button", { type: "button", class: "secondary", id: `share-version-${x.version}`, "aria-label": `Share a link to version ${x.version}` }, "Share link");
    b.addEventListener("click", async () => {
      clearReport();
      try {
        const link = await api("POST", `${base}/download-links?version=${x.version}&expires_in=3600`);
        const url = new URL(link.url, location.href).href;
        const box = h("input", { id: "share-url", readonly: true, value: url, "aria-label": `Link to version ${link.version}`, size: 60 });
        shared.replaceChildren(`Version ${link.version}, no sign-in needed, until ${link.expires_at.replace("T", " ").slice(0, 16)} UTC: `, box);
        shared.hidden = false;
        box.focus();
        box.select();
      } catch (e) {
        report(e);
      }
    });
    return b;
  }

  /** An earlier version made current again, as a new version (drafts only). */
  function restoreButton(d, x) {
    if (!writer || d.state !== "draft" || x.version === d.current?.version) return null;
    const b = h("button", { type: "button", class: "secondary", id: `restore-version-${x.version}`, "aria-label": `Restore version ${x.version}` }, "Restore");
    b.addEventListener("click", async () => {
      b.disabled = true;
      clearReport();
      try {
        await api("POST", `${base}/versions/${x.version}/restore`);
        await load();
      } catch (e) {
        report(e);
        b.disabled = false;
      }
    });
    return b;
  }

  async function load() {
    const [d, v] = await Promise.all([api("GET", base), api("GET", `${base}/versions`)]);
    title.textContent = d.title;
    document.title = `${d.title} · CIM console`;
    meta.textContent = `${d.document_id} · ${d.state}${d.description ? ` · ${d.description}` : ""}${d.tags.length ? ` · tags: ${d.tags.join(", ")}` : ""}`;
    meta.dataset.state = d.state;
    actions?.show(d, v.items);
    compliance.show(d, v.items);
    form.hidden = !session.can("writer") || d.state !== "draft";
    versions.replaceChildren(
      ...v.items
        .slice()
        .reverse()
        .map((x) =>
          h(
            "tr",
            { dataset: { version: x.version } },
            h("td", { class: "num" }, x.version),
            h("td", {}, x.filename),
            h("td", { class: "num" }, size(x.size)),
            h("td", {}, x.content_type),
            h("td", { class: "cid" }, x.cid),
            h("td", { class: "tags" }, x.tags.join(", ")),
            h("td", {}, time(x.created_at)),
            h("td", {}, h("div", { class: "row-line actions" }, ...(x.quarantined ? ["quarantined"] : [h("a", { href: `${base}/content?version=${x.version}`, download: x.filename || true, id: `download-${x.version}` }, "Download"), shareButton(x)]), restoreButton(d, x))),
          ),
        ),
    );
  }
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    submitting(form, async () => {
      await next.send(id);
      await load();
    });
  });
  const parts = h(
    "div",
    {},
    h("section", { class: "card", "aria-labelledby": "versions-title" }, h("h2", { id: "versions-title" }, "Versions"), table("Content versions, newest first", ["Version", "File", "Size", "Type", "Content id", "Tags", "Stored (UTC)", ""], versions, "versions"), shared),
    form,
    actions ? h("div", { class: "two" }, ...actions.elements) : null,
    h("div", { class: "two" }, ...compliance.elements),
  );
  show(view, "Document", h("p", { class: "crumbs" }, h("a", { href: "#/documents" }, "Documents"), " / "), title, meta, parts);
  try {
    await load();
  } catch (e) {
    parts.remove();
    report(e);
  }
}
