// The console's shell: who is signed in, sign out, and the pages by location hash
// (#/signin, #/graphs, #/graphs/<id>, #/workflows, #/workflows/<id>, #/agents, #/documents, #/documents/<id>, #/events,
// #/operations), so the browser's back button and links work.
// A page that holds something open (a live feed) hands `onLeave` what ends it.

import { api } from "./api.js";
import { clearReport, report } from "./dom.js";
import { signInPage } from "./signin.js";
import { graphsPage } from "./graphs.js";
import { graphPage } from "./graph.js";
import { eventsPage } from "./events.js";
import { operationsPage } from "./operations.js";
import { workflowPage, workflowsPage } from "./workflows.js";
import { agentsPage } from "./agents.js";
import { documentPage, documentsPage } from "./documents.js";
import { disconnect } from "./live.js";

const view = document.getElementById("view");
const session = { me: null, notice: "", returnTo: "" };
let leaving = [];
const onLeave = (end) => leaving.push(end);

/** reader < writer < admin, as the gateway checks them. */
session.can = (role) => {
  const order = ["reader", "writer", "admin"];
  const held = Math.max(-1, ...(session.me?.roles || []).map((r) => order.indexOf(r)));
  return held >= order.indexOf(role);
};

function renderHeader() {
  const me = session.me;
  document.getElementById("nav").hidden = !me;
  document.getElementById("who").hidden = !me;
  // Operators only (admins of an operator tenant): the page counts every tenant's traffic.
  document.getElementById("nav-operations").hidden = !me?.operator;
  document.getElementById("who-name").textContent = me
    ? `${me.subject} · tenant ${me.tenant} · ${me.roles.join(", ") || "no role"}`
    : "";
}

/** Asks the gateway who the session is; null when there is none (or it expired). */
async function whoAmI() {
  try {
    session.me = await api("GET", "/api/v1/auth/me", { quiet401: true });
  } catch (e) {
    session.me = null;
    if (e.status !== 401) report(e);
  }
  renderHeader();
  return session.me;
}

function toSignIn(notice) {
  session.me = null;
  disconnect();
  session.notice = notice;
  renderHeader();
  if (location.hash !== "#/signin") {
    if (location.hash && location.hash !== "#/signin") session.returnTo = location.hash;
    location.hash = "#/signin";
  } else {
    route();
  }
}

async function route() {
  for (const end of leaving.splice(0)) end();
  clearReport();
  const hash = location.hash || "#/graphs";
  const context = { view, session, signedIn, onLeave };
  if (hash === "#/signin") {
    signInPage(context);
    session.notice = "";
    return;
  }
  if (!session.me && !(await whoAmI())) {
    toSignIn("Sign in to continue.");
    return;
  }
  if (hash === "#/events") return eventsPage(context);
  if (hash === "#/operations") return operationsPage(context);
  if (hash === "#/workflows") return workflowsPage(context);
  if (hash === "#/agents") return agentsPage(context);
  if (hash === "#/documents") return documentsPage(context);
  const doc = hash.match(/^#\/documents\/([^/]+)$/);
  if (doc) return documentPage(context, decodeURIComponent(doc[1]));
  const workflow = hash.match(/^#\/workflows\/([^/]+)$/);
  if (workflow) return workflowPage(context, decodeURIComponent(workflow[1]));
  const graph = hash.match(/^#\/graphs\/([^/]+)$/);
  if (graph) return graphPage(context, decodeURIComponent(graph[1]));
  return graphsPage(context);
}

async function signedIn() {
  await whoAmI();
  const next = session.returnTo || "#/graphs";
  session.returnTo = "";
  if (location.hash === next) route();
  else location.hash = next;
}

document.getElementById("sign-out").addEventListener("click", async () => {
  try {
    await api("POST", "/api/v1/auth/logout", { quiet401: true });
  } catch (e) {
    report(e);
    return;
  }
  session.returnTo = "";
  toSignIn("Signed out.");
});

// Any call the gateway refuses for want of a session (expired, revoked, signed out elsewhere).
window.addEventListener("cim:unauthenticated", (e) => {
  toSignIn(`Your session has ended (${e.detail.detail || e.detail.title}); sign in again.`);
});
window.addEventListener("hashchange", route);
route();
