// The gateway's REST API on the same origin. The console session cookie (HttpOnly, set by
// POST /api/v1/auth/login) travels with every call; scripts never see it.

/** An error answer of the API: its problem+json title and detail. */
export class Problem extends Error {
  constructor(status, title, detail) {
    super(detail ? `${title}: ${detail}` : title);
    this.status = status;
    this.title = title;
    this.detail = detail;
  }
}

function parse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/**
 * Calls the API; answers the JSON body (null when empty) or throws a Problem. A 401 also
 * announces `cim:unauthenticated`, so whichever page made the call, the console goes to sign in.
 */
export async function api(method, path, { body, headers = {}, quiet401 = false } = {}) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json", ...headers } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new Problem(0, "Gateway unreachable", String(e.message || e));
  }
  const text = await response.text();
  const json = text ? parse(text) : null;
  if (!response.ok) {
    const problem = new Problem(response.status, json?.title || response.statusText, json?.detail || "");
    if (response.status === 401 && !quiet401) {
      window.dispatchEvent(new CustomEvent("cim:unauthenticated", { detail: problem }));
    }
    throw problem;
  }
  return json;
}

/** A path segment, escaped. */
export const seg = (s) => encodeURIComponent(s);
