// Test-only: drives Debian's Chromium (never a downloaded browser) through the agent's page for
// agent/tests/ui_browser.rs. Usage:
//   node drive.mjs incident <base url> <artifact dir> <subject> <trace url prefix>
//   node drive.mjs degraded <base url> <artifact dir>
//   node drive.mjs unreachable <base url> <artifact dir>   (waits for "stop" on stdin)
// Prints one JSON object with what it saw on its last stdout line; exits non-zero on a failed
// expectation, with the reason on stderr.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const [mode, base, artifacts, ...rest] = process.argv.slice(2);
mkdirSync(artifacts, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), 'ks-chromium-'));
const origin = new URL(base).origin;
const seen = { requests: [], foreign: [], console_errors: [], page_errors: [] };

function check(cond, what) {
  if (!cond) throw new Error(`expectation failed: ${what}`);
}

const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
  viewport: { width: 1440, height: 1000 },
  deviceScaleFactor: 1,
});
let result = {};
try {
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.on('request', (r) => {
    const u = r.url();
    seen.requests.push(u);
    if (!u.startsWith(origin) && !u.startsWith('data:')) seen.foreign.push(u);
  });
  page.on('console', (m) => { if (m.type() === 'error') seen.console_errors.push(m.text()); });
  page.on('pageerror', (e) => seen.page_errors.push(String(e)));
  page.setDefaultTimeout(30000);

  if (mode === 'incident') result = await incident(page, ...rest);
  else if (mode === 'degraded') result = await degraded(page);
  else if (mode === 'unreachable') result = await unreachable(page);
  else throw new Error(`unknown mode ${mode}`);

  check(seen.foreign.length === 0, `every request goes to the agent (${seen.foreign.join(', ')})`);
  check(seen.page_errors.length === 0, `no script errors (${seen.page_errors.join(' | ')})`);
  // A CSP violation (an inline style or script, an outside asset) is a console error.
  const errors = seen.console_errors.filter((e) => !(mode === 'unreachable' && /Failed to load resource|ERR_CONNECTION_REFUSED|Failed to fetch/.test(e)));
  check(errors.length === 0, `no console errors (${errors.join(' | ')})`);
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
result.requests = seen.requests.length;
console.log(JSON.stringify(result));

async function incident(page, subject, tracePrefix) {
  await page.goto(base + '/');
  await page.click('[data-window="60"]');
  // (The agent watches the whole node: other incidents may be listed beside ours.)
  const card = page.locator(`.incident-card[data-class="connection_fault"][data-subject="${subject}"]`);
  await card.first().waitFor();
  // The marker on the timeline, and the endpoint in the resets lane's legend.
  const band = page.locator(`#chart-svg g.flag[data-class="connection_fault"][data-subject="${subject}"]`);
  await band.first().waitFor();
  const ep = subject.replace(/^ep:/, '');
  await page.locator(`#chart-svg text[data-endpoint="${ep}"]`).first().waitFor();
  const beforeClick = await page.locator('#detail').isVisible();

  // Click the incident where a person would: its marker on the timeline.
  await band.first().click();
  await page.locator('#detail #evidence').waitFor();
  const summary = await page.locator('#detail-summary').textContent();
  const evidence = await page.locator('#detail #evidence').innerText();
  const why = await page.locator('#detail .gauge').innerText();
  const rows = page.locator('#affected-spans tbody tr');
  await rows.first().waitFor();
  const spanRows = await rows.count();
  const enrichment = await page.locator('#affected-spans').innerText();
  const links = await page.locator('#detail a.trace-link').evaluateAll((as) => as.map((a) => a.href));
  const selectedCard = await page.locator('.incident-card.selected').count();
  check(!beforeClick, 'no detail before a click');
  check(summary.includes(ep), `summary names the endpoint: ${summary}`);
  // Which peer and which failure: the service aborted established connections.
  const peer = await page.locator('#detail-peer').innerText();
  check(peer.includes(ep) && /failure: reset by peer ×\d+/.test(peer), `dependency and failure kind: ${peer}`);
  check(/connections reset/.test(evidence) && /who sent the resets\s+service/.test(evidence), `evidence: ${evidence}`);
  check(/baseline/.test(why) && /threshold/.test(why) && /observed/.test(why), `why: ${why}`);
  check(spanRows >= 5, `affected spans listed: ${spanRows}`);
  check(/resets_sent=1/.test(enrichment), `kernel enrichment shown: ${enrichment.slice(0, 400)}`);
  check(links.length >= spanRows && links.every((h) => h.startsWith(tracePrefix)), `trace links: ${links.slice(0, 3)}`);
  check(selectedCard === 1, 'the clicked incident is highlighted in the list');
  // Hovering the incident's seconds lists each second's values. The band can span several
  // seconds, and the chart counts an event in the second the agent read it (the ring is read
  // every 100 ms), so the resets may sit one second after the detector's (kernel-time) second:
  // sweep the band and look for the second that has them (CI once hovered the one before).
  const box = await page.locator(`#chart-svg g.band:not(.flag)[data-subject="${subject}"] rect`).first().boundingBox();
  const rstLine = new RegExp(`${ep.replace(/\./g, '\\.')}: \\d+ RST sent`);
  const tips = [];
  const step = Math.max(2, box.width / 24);
  // A closed band ends at the detector's last second: look a little past it too.
  for (let px = box.x + 1; px < box.x + box.width + Math.max(12, box.width / 4); px += step) {
    await page.mouse.move(px, box.y + box.height / 2);
    const tip = await page.locator('#tip').innerText();
    tips.push(tip);
    if (rstLine.test(tip)) break;
  }
  const tip = tips.find((t) => rstLine.test(t));
  check(tip !== undefined, `tooltip over the band: ${tips.join(' | ')}`);
  await page.mouse.move(5, 5);
  await page.screenshot({ path: join(artifacts, 'incident.png'), fullPage: true });

  // Nobody looking: the page stops asking. Then it resumes at once when visible again.
  const api = () => seen.requests.filter((u) => u.includes('/api/')).length;
  await setVisibility(page, 'hidden');
  const hiddenStart = api();
  await page.waitForTimeout(6000);
  const whileHidden = api() - hiddenStart;
  await setVisibility(page, 'visible');
  await page.waitForTimeout(1000);
  const afterVisible = api() - hiddenStart - whileHidden;
  check(whileHidden === 0, `no polling while hidden (${whileHidden} requests)`);
  check(afterVisible >= 1, 'polling resumes when visible');
  const live = await page.locator('#live-text').textContent();
  return { summary, tip, span_rows: spanRows, links: links.length, first_link: links[0], while_hidden: whileHidden, after_visible: afterVisible, live, evidence };
}

async function setVisibility(page, v) {
  await page.evaluate((v) => {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => v });
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => v === 'hidden' });
    document.dispatchEvent(new Event('visibilitychange'));
  }, v);
}

async function degraded(page) {
  await page.goto(base + '/');
  const banner = page.locator('.banner', { hasText: 'No spans have arrived yet' });
  await banner.waitFor();
  const tasks = page.locator('#chart-svg text', { hasText: 'No task source' });
  await tasks.waitFor();
  const runq = page.locator('#chart-svg text', { hasText: 'No process watched' });
  await runq.waitFor();
  const chips = await page.locator('#chips').innerText();
  const empty = await page.locator('#incident-empty').isVisible();
  check(/spans: none yet/.test(chips), `chips: ${chips}`);
  check(empty, 'the empty incident list says so');
  await page.screenshot({ path: join(artifacts, 'degraded.png'), fullPage: true });
  return { banner: await banner.innerText(), chips };
}

async function unreachable(page) {
  await page.goto(base + '/');
  await page.locator('#live-text', { hasText: 'live' }).waitFor();
  // Tell the test to stop the agent, and wait until it has.
  console.log('READY');
  const rl = createInterface({ input: process.stdin });
  for await (const line of rl) if (line.trim() === 'stopped') break;
  rl.close();
  process.stdin.destroy();
  const banner = page.locator('.banner', { hasText: 'The agent is not answering' });
  await banner.waitFor({ timeout: 20000 });
  const live = await page.locator('#live-text').textContent();
  check(/unreachable/.test(live), `live indicator: ${live}`);
  // What was shown before stays on screen.
  const lanes = await page.locator('#chart-svg .lane-title').count();
  check(lanes >= 5, `the timeline is still drawn (${lanes} lanes)`);
  await page.screenshot({ path: join(artifacts, 'unreachable.png'), fullPage: true });
  return { live, lanes };
}
