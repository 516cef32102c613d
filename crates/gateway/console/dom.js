// Small DOM helpers: elements are built with textContent, never from HTML strings, so names and
// properties from the API cannot inject markup.

/** h("button", {type: "submit", onclick}, "Save"): an element with attributes and children. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** A labelled form field: the label names the control, so screen readers and tests find it. */
export function field(label, control, hint) {
  const id = control.id || `f-${Math.random().toString(36).slice(2)}`;
  control.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hint ? h("small", {}, hint) : null);
}

const banner = () => document.getElementById("problem");

/** Shows an API problem (title and detail) or any other error in the alert banner. */
export function report(err) {
  const el = banner();
  el.replaceChildren(h("strong", {}, err.title || "Error"), " ", err.detail ?? err.message ?? String(err));
  el.hidden = false;
}

export function clearReport() {
  banner().hidden = true;
  banner().replaceChildren();
}

/** Runs `work` with the form's submit button disabled; a failure is reported. */
export async function submitting(form, work) {
  const button = form.querySelector("[type=submit]");
  if (button) button.disabled = true;
  clearReport();
  try {
    await work();
  } catch (e) {
    report(e);
  } finally {
    if (button) button.disabled = false;
  }
}

/** Parses a JSON object typed into a textarea; an empty one is {}. */
export function jsonObject(text, label) {
  if (!text.trim()) return {};
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw { title: `${label} is not JSON`, detail: e.message };
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw { title: `${label} must be a JSON object`, detail: "for example {\"name\": \"a\"}" };
  }
  return value;
}

/** Puts a page's content in the view, sets the title and moves focus to its heading. */
export function show(view, title, ...content) {
  document.title = `${title} · CIM console`;
  view.replaceChildren(...content);
  const heading = view.querySelector("h1");
  if (heading) {
    heading.tabIndex = -1;
    heading.focus();
  }
}

/** A timestamp as the lists show it: `2026-12-02 02:55:26`. */
export const time = (iso) => (iso || "").replace("T", " ").slice(0, 19);

/** A list table that scrolls sideways inside its card on a phone; `body` is its tbody. */
export function table(caption, columns, body, id) {
  return h(
    "div",
    { class: "scroll" },
    h(
      "table",
      { class: "list", id },
      h("caption", { class: "sr" }, caption),
      h("thead", {}, h("tr", {}, ...columns.map((c) => h("th", { scope: "col" }, c)))),
      body,
    ),
  );
}
