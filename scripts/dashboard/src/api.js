// The control-plane API (/client/v4) as the signed-in token. The token lives in
// this tab's sessionStorage only and goes out as `Authorization: Bearer` on every call.

const BASE = "/client/v4";
const TOKEN_KEY = "warren.token";

export class ApiError extends Error {
  constructor(status, message, code = 0) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const session = {
  get token() { return sessionStorage.getItem(TOKEN_KEY); },
  set token(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  },
  account: null, // {id, name}
  onExpired: () => {},
};

const seg = encodeURIComponent;

async function call(method, path, { json, form, raw = false, token = session.token, signal } = {}) {
  const headers = { Authorization: `Bearer ${token}` };
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form) {
    body = form; // the browser sets the multipart boundary
  }
  let response;
  try {
    response = await fetch(BASE + path, { method, headers, body, signal, cache: "no-store" });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "Cannot reach the control plane. Check your connection.");
  }
  if (raw && response.ok) return response;
  let envelope = null;
  try { envelope = await response.json(); } catch { /* not JSON: handled below */ }
  if (!response.ok || !envelope || envelope.success !== true) {
    const first = envelope?.errors?.[0];
    const message = first?.message ?? `${response.status} ${response.statusText}`;
    if (response.status === 401 && token === session.token) session.onExpired();
    throw new ApiError(response.status, message, first?.code ?? 0);
  }
  return envelope.result;
}

const acct = () => `/accounts/${seg(session.account.id)}`;
const script = (name, ...rest) => [`${acct()}/workers/scripts/${seg(name)}`, ...rest.map(seg)].join("/");

export const api = {
  async signIn(token) {
    const verified = await call("GET", "/user/tokens/verify", { token });
    const accounts = await call("GET", "/accounts", { token });
    const account = accounts.find((a) => a.id === verified.account_id) ?? { id: verified.account_id, name: verified.account_id };
    return { id: account.id, name: account.name };
  },
  scripts: () => call("GET", `${acct()}/workers/scripts`),
  script: (name) => call("GET", script(name)),
  versions: (name) => call("GET", script(name, "versions")),
  version: (name, id) => call("GET", script(name, "versions", id)),
  async module(name, versionId, moduleName) {
    const response = await call("GET", `${script(name, "versions", versionId, "modules")}/${moduleName.split("/").map(seg).join("/")}`, { raw: true });
    return response.arrayBuffer();
  },
  deployments: (name) => call("GET", script(name, "deployments")),
  deploy: (name, versions, message) => call("POST", script(name, "deployments"), {
    json: { versions: versions.map(([id, pct]) => ({ version_id: id, percentage: pct })), annotations: message ? { "workers/message": message } : undefined },
  }),
  // The same multipart upload `warren deploy` sends: a metadata part, then one part per module.
  upload(name, metadata, modules) {
    const form = new FormData();
    form.append("metadata", new Blob([JSON.stringify(metadata)], { type: "application/json" }), "metadata.json");
    for (const m of modules) form.append(m.name, new Blob([m.data], { type: m.contentType }), m.name);
    return call("PUT", script(name), { form });
  },
  preview: (body, signal) => call("POST", `${acct()}/workers/preview`, { json: body, signal }),
  analytics: (minutes = 60) => call("GET", `${acct()}/workers/analytics?minutes=${minutes}`),
  startTail: (name) => call("POST", script(name, "tails"), { json: {} }),
  stopTail: (name, id) => call("DELETE", script(name, "tails", id)),
};
