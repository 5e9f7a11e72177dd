// Drives the warren dashboard in Debian's chromium (playwright-core, never a downloaded browser).
// Invoked by tests/test_dashboard_browser.py, which starts a real control plane and edge node and
// passes them in the environment. Prints one JSON line per step; exits non-zero on the first failure.
//
// env: DASHBOARD_URL (control plane), TOKEN, EDGE_URL, WORKER (script name), WORKER_HOST (its host
//      on the edge), ARTIFACTS (screenshot directory), CHROMIUM (executable), EXPECT_TAIL ("1"/"0")
import http from "node:http";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (value === undefined) throw new Error(`missing environment variable ${name}`);
  return value;
};
const URL_ = env("DASHBOARD_URL");
const TOKEN = env("TOKEN");
const EDGE = new URL(env("EDGE_URL"));
const WORKER = env("WORKER");
const HOST = env("WORKER_HOST");
const ARTIFACTS = env("ARTIFACTS");
const EXPECT_TAIL = process.env.EXPECT_TAIL === "1";
mkdirSync(ARTIFACTS, { recursive: true });

const step = (name, extra = {}) => console.log(JSON.stringify({ step: name, ...extra }));

function edgeGet(path = "/") {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: EDGE.hostname, port: EDGE.port, path, headers: { host: HOST } }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk) => { body += chunk; });
      res.on("end", () => resolve({ status: res.statusCode, body }));
    });
    req.on("error", reject);
    req.setTimeout(10000, () => req.destroy(new Error("edge request timed out")));
  });
}

async function edgeServes(text, timeoutMs = 8000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await edgeGet("/");
    if (last.status === 200 && last.body === text) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`the edge never served ${JSON.stringify(text)}; last: ${last?.status} ${JSON.stringify(last?.body)}`);
}

const LAPTOP = { viewport: { width: 1366, height: 860 } };
const PHONE = { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true };

const V2 = `export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    console.log("dashboard edit saw", url.pathname);
    return new Response("v2 from the dashboard");
  },
};
`;
const BROKEN = "export default {\n  fetch() { return new Response('oops' }\n};\n";

async function signIn(page) {
  await page.goto(URL_ + "/");
  await page.getByLabel("API token").waitFor();
  await page.getByLabel("API token").fill(TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Workers" }).waitFor();
}

async function setCode(page, text) {
  const content = page.locator(".cm-content");
  await content.click();
  await page.keyboard.press("Control+A");
  await page.keyboard.press("Delete");
  await page.keyboard.insertText(text);
}

async function shot(page, name) {
  await page.waitForTimeout(150); // let transitions settle
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path, fullPage: false });
  step("screenshot", { path });
}

// playwright-core gives each launch a fresh --user-data-dir of its own (a temporary profile it deletes).
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
  ],
});
const problems = [];
let failed = false;
let current = null; // the page a failure screenshot is taken of
try {
  // ---- laptop: the whole flow ----
  const laptop = await browser.newContext(LAPTOP);
  const page = await laptop.newPage();
  current = page;
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    // Without the tail and analytics endpoints their 404s are expected: the UI shows "unavailable".
    const expected404 = !EXPECT_TAIL && /Failed to load resource.*404/.test(message.text());
    if (message.type() === "error" && !expected404) problems.push(`console: ${message.text()}`);
  });
  page.setDefaultTimeout(15000);

  await page.goto(URL_ + "/");
  await page.getByLabel("API token").fill("wrn_not_a_real_token_at_all_000000000000");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByText("This token is not valid.").waitFor();
  problems.length = 0; // the 401 above is logged by the browser on purpose
  await shot(page, "laptop-1-login");
  await signIn(page);
  step("signed in");
  const row = page.locator(".worker-row", { hasText: WORKER });
  await row.waitFor();
  await page.waitForSelector(".stats, .unavailable");
  await shot(page, "laptop-2-workers");

  await row.click();
  await page.locator(".cm-content").waitFor();
  await page.locator("[data-testid=preview-body]").filter({ hasText: "v1" }).waitFor();
  step("editor open, preview of the deployed code");

  await setCode(page, BROKEN);
  await page.locator(".preview-error").filter({ hasText: "SyntaxError" }).waitFor();
  await page.locator(".cm-lint-marker-error").first().waitFor();
  await shot(page, "laptop-3-syntax-error");
  step("a syntax error shows in the preview and the gutter");

  await setCode(page, V2);
  await page.locator("[data-testid=preview-body]").filter({ hasText: "v2 from the dashboard" }).waitFor();
  await page.locator(".preview-error").waitFor({ state: "hidden" });
  await page.getByRole("tab", { name: /Console \(1\)/ }).click();
  await page.locator(".console").filter({ hasText: "dashboard edit saw /" }).waitFor();
  await page.getByRole("tab", { name: "Response" }).click();
  step("the preview follows the edit");
  if ((await edgeGet("/")).body !== "v1") throw new Error("the preview deployed something");
  await shot(page, "laptop-4-editor");

  await page.getByRole("button", { name: "Deploy", exact: true }).click();
  await page.getByLabel("Message (optional)").fill("edited in the dashboard");
  await page.locator("dialog").getByRole("button", { name: "Deploy" }).click();
  await page.getByText(/Deployed version #2/).waitFor();
  await edgeServes("v2 from the dashboard");
  step("deployed; the edge serves the new code");

  await page.getByRole("tab", { name: "Deployments" }).click();
  await page.getByText("edited in the dashboard").first().waitFor();
  await shot(page, "laptop-5-deployments");
  await page.getByRole("button", { name: "Roll back" }).click();
  await page.locator("dialog").getByRole("button", { name: "Roll back" }).click();
  await page.getByText(/now serves version #1/).waitFor();
  await edgeServes("v1");
  step("rolled back; the edge serves version 1");
  await page.getByRole("button", { name: "Deploy version 2" }).click();
  await page.locator("dialog").getByRole("button", { name: "Deploy" }).click();
  await page.getByText(/now serves version #2/).waitFor();
  await edgeServes("v2 from the dashboard");
  step("deployed version 2 again from the archive");

  await page.getByRole("tab", { name: "Logs" }).click();
  if (EXPECT_TAIL) {
    await page.locator(".live-state[data-state=live]").waitFor();
    await edgeGet("/from-the-tail-test");
    await page.locator(".tail-event").filter({ hasText: "/from-the-tail-test" }).filter({ hasText: "dashboard edit saw /from-the-tail-test" }).waitFor();
    step("live tail shows a request sent through the edge");
  } else {
    await page.getByText("Live logs unavailable").waitFor();
    step("live tail: unavailable state shown (no tail endpoint)");
  }
  await shot(page, "laptop-6-logs");

  await page.getByRole("link", { name: "Workers" }).click();
  await page.getByRole("heading", { name: "Workers" }).waitFor();
  await page.getByRole("button", { name: "Create worker" }).first().click();
  await page.getByLabel("Worker name").fill("made-in-browser");
  await page.locator("[data-testid=preview-body]").filter({ hasText: "Hello from warren!" }).waitFor();
  await shot(page, "laptop-7-new-worker");
  // An HTML response is shown rendered, in a sandboxed frame (no scripts).
  await setCode(page, 'export default { fetch() { return new Response("<h1>Rendered heading</h1><script>document.title=1</script>", { headers: { "content-type": "text/html" } }); } };');
  await page.frameLocator(".preview-frame").getByRole("heading", { name: "Rendered heading" }).waitFor();
  await page.waitForTimeout(200);
  const blocked = problems.filter((p) => p.includes("Blocked script execution in 'about:srcdoc'"));
  if (blocked.length === 0) throw new Error("the script in the previewed HTML was not blocked");
  problems.splice(0, problems.length, ...problems.filter((p) => !blocked.includes(p)));
  step("an HTML preview is rendered in a sandboxed frame, its script blocked");
  // Leaving unsaved edits asks first: dismissed, the editor stays; accepted, the list shows.
  page.once("dialog", (d) => d.dismiss());
  await page.getByRole("link", { name: "Workers" }).click();
  await page.waitForTimeout(200);
  if (!(await page.getByLabel("Worker name").isVisible())) throw new Error("unsaved edits were left without asking");
  page.once("dialog", (d) => d.accept());
  await page.getByRole("link", { name: "Workers" }).click();
  await page.getByRole("heading", { name: "Workers" }).waitFor();
  step("leaving unsaved edits asks first");
  await laptop.close();

  // ---- phone ----
  const phone = await browser.newContext(PHONE);
  const mobile = await phone.newPage();
  current = mobile;
  mobile.on("pageerror", (error) => problems.push(`page error (phone): ${error.message}`));
  mobile.setDefaultTimeout(15000);
  await mobile.goto(URL_ + "/");
  await mobile.getByLabel("API token").waitFor();
  await shot(mobile, "phone-1-login");
  await signIn(mobile);
  await mobile.locator(".worker-row", { hasText: WORKER }).waitFor();
  await mobile.waitForSelector(".stats, .unavailable");
  await shot(mobile, "phone-2-workers");
  const overflow = await mobile.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 1) throw new Error(`the workers page is ${overflow}px wider than a phone`);
  await mobile.locator(".worker-row", { hasText: WORKER }).click();
  await mobile.locator("[data-testid=preview-body]").filter({ hasText: "v2 from the dashboard" }).waitFor();
  await shot(mobile, "phone-3-editor");
  await mobile.locator(".preview-card").scrollIntoViewIfNeeded();
  await shot(mobile, "phone-4-preview");
  const overflowCode = await mobile.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflowCode > 1) throw new Error(`the code page is ${overflowCode}px wider than a phone`);
  await mobile.getByRole("tab", { name: "Deployments" }).click();
  await mobile.getByText("Active deployment").waitFor();
  await shot(mobile, "phone-5-deployments");
  await mobile.getByRole("tab", { name: "Logs" }).click();
  if (EXPECT_TAIL) {
    await mobile.locator(".live-state[data-state=live]").waitFor();
    await edgeGet("/seen-on-a-phone?x=1");
    await mobile.locator(".tail-event").filter({ hasText: "/seen-on-a-phone" }).waitFor();
  } else {
    await mobile.getByText("Live logs unavailable").waitFor();
  }
  await shot(mobile, "phone-6-logs");
  await phone.close();

  if (problems.length) throw new Error(`the page reported errors:\n${problems.join("\n")}`);
  step("done");
} catch (error) {
  failed = true;
  console.log(JSON.stringify({ step: "failed", error: String(error.stack || error) }));
  if (current && !current.isClosed()) await shot(current, "failure").catch(() => {});
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
