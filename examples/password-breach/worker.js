// Has this password appeared in a data breach? Checked the way Pwned Passwords
// is meant to be used, with k-anonymity: only the first 5 hex digits of the
// password's SHA-1 leave the edge, the range API answers every suffix it knows
// under that prefix, and the match is made here.

const FORM = `<!doctype html>
<meta charset="utf-8">
<title>Password check</title>
<form method="post">
  <label>Password <input type="password" name="password" autocomplete="new-password" required></label>
  <button>Check</button>
</form>
`;

async function sha1Hex(text) {
  const digest = await crypto.subtle.digest("SHA-1", new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("").toUpperCase();
}

// How many breaches list this SHA-1: 0 if none. Throws if the range API fails.
async function timesBreached(hash, env) {
  const prefix = hash.slice(0, 5);
  const suffix = hash.slice(5);
  const response = await fetch(`${env.ORIGIN}/range/${prefix}`, {
    // Padding hides how many real suffixes the prefix has from anyone
    // watching the size of the answer; padded entries have a count of 0.
    headers: { "Add-Padding": "true", "User-Agent": "warren-password-breach-example" },
  });
  if (!response.ok) throw new Error(`range API answered ${response.status}`);
  for (const line of (await response.text()).split("\n")) {
    const [candidate, count] = line.trim().split(":");
    if (candidate === suffix) return Number.parseInt(count, 10) || 0;
  }
  return 0;
}

function json(body, status = 200) {
  return Response.json(body, { status, headers: { "cache-control": "no-store" } });
}

export default {
  async fetch(request, env) {
    if (request.method === "GET") {
      return new Response(FORM, { headers: { "content-type": "text/html; charset=utf-8" } });
    }
    if (request.method !== "POST") {
      return json({ error: "use GET for the form or POST to check" }, 405);
    }
    let form;
    try {
      form = await request.formData();
    } catch {
      return json({ error: "send the password as a form (application/x-www-form-urlencoded or multipart/form-data)" }, 415);
    }
    const password = form.get("password");
    if (typeof password !== "string" || password === "") {
      return json({ error: "the form has no password field" }, 400);
    }
    let count;
    try {
      count = await timesBreached(await sha1Hex(password), env);
    } catch (error) {
      // The password is never logged; the reason the check failed is.
      console.error("password check failed:", error.message);
      return json({ error: "the breach database is unavailable, try again" }, 502);
    }
    return json({ breached: count > 0, count });
  },
};
