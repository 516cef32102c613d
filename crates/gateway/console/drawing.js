// The graph drawn as SVG: a deterministic circle layout (nodes in id order, so the same graph
// is always drawn the same way), edges as arrows, and pan/zoom by moving the viewBox.

const NS = "http://www.w3.org/2000/svg";
const R = 18; // node radius

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

/** Positions by node id: evenly on a circle whose size grows with the count. */
export function layout(nodes) {
  const ids = nodes.map((n) => n.id).sort();
  const radius = Math.max(90, (ids.length * (R * 2 + 14)) / (2 * Math.PI));
  const at = new Map();
  ids.forEach((id, i) => {
    if (ids.length === 1) return at.set(id, { x: 0, y: 0 });
    const angle = (2 * Math.PI * i) / ids.length - Math.PI / 2;
    at.set(id, { x: radius * Math.cos(angle), y: radius * Math.sin(angle) });
  });
  return { at, radius: ids.length > 1 ? radius : 0 };
}

/** Draws `snapshot` ({nodes, edges}) into the <svg>; `onSelect({kind, item})` on click or Enter. */
export function draw(root, snapshot, onSelect, selectedId) {
  const { at, radius } = layout(snapshot.nodes);
  // At least a frame for a few nodes, so one node alone is not drawn huge.
  const span = Math.max(radius + R * 5, 200);
  root.dataset.home = `${-span} ${-span} ${2 * span} ${2 * span}`;
  root.setAttribute("viewBox", root.dataset.home);
  const defs = svg("defs");
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
  marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }));
  defs.append(marker);
  const edges = svg("g", { class: "edges" });
  const nodes = svg("g", { class: "nodes" });
  const selectable = (el, kind, item, label) => {
    el.setAttribute("tabindex", "0");
    el.setAttribute("role", "button");
    el.setAttribute("aria-label", label);
    el.dataset.id = item.id;
    if (item.id === selectedId) el.classList.add("selected");
    const pick = () => {
      root.querySelectorAll(".selected").forEach((s) => s.classList.remove("selected"));
      el.classList.add("selected");
      onSelect({ kind, item });
    };
    el.addEventListener("click", pick);
    el.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        pick();
      }
    });
  };
  for (const e of snapshot.edges) {
    const a = at.get(e.source);
    const b = at.get(e.target);
    if (!a || !b) continue;
    const g = svg("g", { class: "edge" });
    let d;
    let mid;
    if (e.source === e.target) {
      d = `M${a.x - 8},${a.y - R} C${a.x - 40},${a.y - 70} ${a.x + 40},${a.y - 70} ${a.x + 8},${a.y - R}`;
      mid = { x: a.x, y: a.y - 58 };
    } else {
      const dx = b.x - a.x;
      const dy = b.y - a.y;
      const len = Math.hypot(dx, dy) || 1;
      const [ux, uy] = [dx / len, dy / len];
      d = `M${a.x + ux * R},${a.y + uy * R} L${b.x - ux * (R + 2)},${b.y - uy * (R + 2)}`;
      mid = { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 };
    }
    g.append(svg("path", { d, class: "hit" }), svg("path", { d, class: "line", "marker-end": "url(#arrow)" }));
    g.append(svg("text", { x: mid.x, y: mid.y - 4, class: "edge-label" }, e.type));
    selectable(g, "edge", e, `edge ${e.type} from ${e.source} to ${e.target}`);
    edges.append(g);
  }
  for (const n of snapshot.nodes) {
    const p = at.get(n.id);
    const g = svg("g", { class: "node", transform: `translate(${p.x},${p.y})` });
    const name = typeof n.properties?.name === "string" ? n.properties.name : n.id;
    g.append(svg("circle", { r: R }), svg("text", { y: R + 14, class: "node-label" }, name));
    g.append(svg("text", { y: 4, class: "node-type" }, n.type.slice(0, 3)));
    selectable(g, "node", n, `node ${name} of type ${n.type}`);
    nodes.append(g);
  }
  root.replaceChildren(defs, edges, nodes);
}

/**
 * Marks an answer in the drawing: `nodes` and `edges` (ids) as part of it, `origin` (a node id)
 * as where it starts; null clears it. `data-answer` on the <svg> counts what is marked.
 */
export function highlight(root, lit) {
  root.querySelectorAll(".answer, .origin").forEach((el) => el.classList.remove("answer", "origin"));
  let marked = 0;
  for (const el of root.querySelectorAll(".node, .edge")) {
    const ids = el.classList.contains("node") ? lit?.nodes : lit?.edges;
    if (ids?.includes(el.dataset.id)) {
      el.classList.add("answer");
      marked++;
    }
    if (el.classList.contains("node") && el.dataset.id === lit?.origin) el.classList.add("origin");
  }
  if (lit) root.dataset.answer = String(marked);
  else delete root.dataset.answer;
}

function box(root) {
  return root.getAttribute("viewBox").split(" ").map(Number);
}

/** Scales the view by `k` around its centre (k < 1 zooms in). */
export function zoom(root, k, cx, cy) {
  const [x, y, w, h] = box(root);
  const fx = cx ?? x + w / 2;
  const fy = cy ?? y + h / 2;
  const nw = Math.min(Math.max(w * k, 40), 20000);
  const s = nw / w;
  root.setAttribute("viewBox", `${fx - (fx - x) * s} ${fy - (fy - y) * s} ${nw} ${h * s}`);
}

export function pan(root, dx, dy) {
  const [x, y, w, h] = box(root);
  root.setAttribute("viewBox", `${x + dx * w} ${y + dy * h} ${w} ${h}`);
}

export function reset(root) {
  root.setAttribute("viewBox", root.dataset.home);
}

/** Drag to pan, wheel to zoom around the pointer, arrows and +/- when the drawing has focus. */
export function interactive(root) {
  let drag = null;
  root.addEventListener("pointerdown", (e) => {
    if (e.target.closest(".node, .edge")) return;
    drag = { x: e.clientX, y: e.clientY };
    root.setPointerCapture(e.pointerId);
  });
  root.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const rect = root.getBoundingClientRect();
    pan(root, -(e.clientX - drag.x) / rect.width, -(e.clientY - drag.y) / rect.height);
    drag = { x: e.clientX, y: e.clientY };
  });
  root.addEventListener("pointerup", () => (drag = null));
  root.addEventListener(
    "wheel",
    (e) => {
      e.preventDefault();
      const rect = root.getBoundingClientRect();
      const [x, y, w, h] = box(root);
      const cx = x + ((e.clientX - rect.left) / rect.width) * w;
      const cy = y + ((e.clientY - rect.top) / rect.height) * h;
      zoom(root, e.deltaY > 0 ? 1.15 : 1 / 1.15, cx, cy);
    },
    { passive: false },
  );
  root.addEventListener("keydown", (e) => {
    if (e.target !== root) return;
    const moves = { ArrowLeft: [-0.1, 0], ArrowRight: [0.1, 0], ArrowUp: [0, -0.1], ArrowDown: [0, 0.1] };
    if (moves[e.key]) pan(root, ...moves[e.key]);
    else if (e.key === "+" || e.key === "=") zoom(root, 1 / 1.25);
    else if (e.key === "-") zoom(root, 1.25);
    else if (e.key === "0") reset(root);
    else return;
    e.preventDefault();
  });
}
