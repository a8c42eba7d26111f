// Drives Debian's chromium (headless, via playwright-core) against a running
// hub's admin dashboard. Started by hub/tests/admin_browser.rs, which passes:
//   node dashboard.mjs ADMIN_URL MQTT_PORT SCREENSHOT_PATH
// Each step has its own timeout; any failure exits non-zero with the step.
import { chromium } from "playwright-core";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [url, mqttPort, screenshot] = process.argv.slice(2);
if (!url || !mqttPort || !screenshot) {
  console.error("usage: node dashboard.mjs ADMIN_URL MQTT_PORT SCREENSHOT_PATH");
  process.exit(2);
}
const STEP = 15000;
let step = "launch chromium";
const profile = mkdtempSync(join(tmpdir(), "polyhub-chromium-"));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.POLYHUB_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    timeout: 30000,
    viewport: { width: 1400, height: 1000 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = context.pages()[0] || await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));

  step = "load the dashboard";
  await page.goto(url, { timeout: STEP });

  step = "show the adapters with their state";
  for (const name of ["mqtt", "web"]) {
    await page.locator(`#adapters tr[data-adapter="${name}"] .state.up`).waitFor({ timeout: STEP });
  }

  step = "go live over SSE";
  await page.locator("#live.on").waitFor({ timeout: STEP });

  step = "show a message published over MQTT (mosquitto_pub) live";
  const pub = spawnSync("mosquitto_pub", ["-h", "127.0.0.1", "-p", mqttPort, "-t", "browser/mqtt/temp", "-m", "21.5 from mosquitto_pub"],
    { timeout: STEP, encoding: "utf8" });
  if (pub.status !== 0) throw new Error("mosquitto_pub failed: " + (pub.stderr || pub.error));
  await page.locator('#recent tr[data-topic="browser/mqtt/temp"]', { hasText: "21.5 from mosquitto_pub" }).waitFor({ timeout: STEP });
  await page.locator('#topics tr[data-topic="browser/mqtt/temp"]', { hasText: "21.5 from mosquitto_pub" }).waitFor({ timeout: STEP });

  step = "search topics by prefix";
  await page.fill("#prefix", "browser/");
  await page.locator('#topics tr[data-topic="browser/mqtt/temp"]').waitFor({ timeout: STEP });

  step = "publish from the form";
  await page.fill("#pub-topic", "form/led");
  await page.fill("#pub-payload", "on from the dashboard");
  await page.click("#pub-send");
  await page.locator("#publish-result", { hasText: "published to form/led" }).waitFor({ timeout: STEP });

  step = "list the SSE client";
  await page.locator("#clients tbody tr", { hasText: "http-sse" }).waitFor({ timeout: STEP });

  step = "screenshot";
  await page.fill("#prefix", "");
  await page.waitForTimeout(1200); // one more tick, so the chart has points
  await page.screenshot({ path: screenshot, fullPage: true, timeout: STEP });
  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  console.log("ok: dashboard checks passed, screenshot " + screenshot);
} catch (e) {
  console.error(`failed at step "${step}": ${e && e.message ? e.message : e}`);
  process.exitCode = 1;
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
