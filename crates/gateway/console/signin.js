// Sign in: a bearer token or an API key is exchanged once for the HttpOnly session cookie
// (POST /api/v1/auth/login); the credential itself is not kept by the page.

import { api } from "./api.js";
import { field, h, show, submitting } from "./dom.js";

export function signInPage({ view, session, signedIn }) {
  const kind = h(
    "select",
    { id: "signin-kind", name: "kind" },
    h("option", { value: "token" }, "Bearer token (JWT)"),
    h("option", { value: "api_key" }, "API key"),
  );
  const secret = h("textarea", {
    id: "signin-secret",
    name: "secret",
    rows: 4,
    required: true,
    autocomplete: "off",
    spellcheck: "false",
  });
  const form = h(
    "form",
    { class: "card narrow", id: "signin-form" },
    field("Credential", kind),
    field("Token or key", secret, "Sent once to start a session; the console keeps only the session cookie."),
    h("button", { type: "submit" }, "Sign in"),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    submitting(form, async () => {
      const value = secret.value.trim();
      const headers = kind.value === "token" ? { Authorization: `Bearer ${value}` } : { "X-Api-Key": value };
      await api("POST", "/api/v1/auth/login", { headers, quiet401: true });
      secret.value = "";
      await signedIn();
    });
  });
  show(
    view,
    "Sign in",
    h("h1", {}, "Sign in"),
    session.notice ? h("p", { class: "notice", id: "signin-notice", role: "status" }, session.notice) : null,
    form,
  );
}
