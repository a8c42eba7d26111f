// Screenshot of the dashboard after it has been live for a while:
//   node screenshot.mjs ADMIN_URL SCREENSHOT_PATH SECONDS
// (hub/tests/admin_browser.rs, the ignored test of the dashboard under load).
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [url, screenshot, seconds] = process.argv.slice(2);
const profile = mkdtempSync(join(tmpdir(), "polyhub-chromium-"));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.POLYHUB_CHROMIUM || "/usr/bin/chromium",
    headless: true, timeout: 30000, viewport: { width: 1400, height: 1000 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = context.pages()[0] || await context.newPage();
  await page.goto(url, { timeout: 15000 });
  await page.locator("#live.on").waitFor({ timeout: 15000 });
  await page.waitForTimeout(Number(seconds || 20) * 1000);
  await page.screenshot({ path: screenshot, fullPage: true, timeout: 15000 });
  console.log("ok: " + screenshot + " · " + await page.locator("#topics-info").textContent());
} catch (e) {
  console.error("failed: " + (e && e.message ? e.message : e));
  process.exitCode = 1;
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
