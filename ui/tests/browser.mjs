// The dashboard in a real browser: Debian's chromium driven by
// playwright-core against a real daemon, which the Rust test
// (crates/hearth/tests/it/ui.rs) starts on a temporary data dir.
//
// Environment:
//   HEARTH_UI_BASE         the dashboard's origin, e.g. http://127.0.0.1:41234
//   HEARTH_UI_LINK         a fresh sign-in link from `hearth ui`
//   HEARTH_UI_SCREENSHOTS  where to write a screenshot of each view
//   CHROMIUM               the browser (default /usr/bin/chromium)
//
// Exits 0 when every check passed; otherwise prints what failed and
// exits 1. Every wait has a deadline: nothing here sleeps to synchronise.

import { mkdirSync } from 'node:fs';
import { chromium } from 'playwright-core';
import { apps } from './apps.mjs';
import { machines } from './machines.mjs';
import { networks } from './networks.mjs';
import { newMachine } from './new-machine.mjs';
import { search } from './search.mjs';
import { BASE, LINK, SHOTS, WAIT_MS, api, audit, check, heading, step, withDeadline } from './lib.mjs';
import { ops } from './ops.mjs';
import { workflows } from './workflows.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
/** The whole run's deadline. */
const RUN_MS = 240_000;

const runTimer = setTimeout(() => {
  console.error(`browser.mjs: the run took longer than ${RUN_MS / 1000} s`);
  process.exit(1);
}, RUN_MS);

mkdirSync(SHOTS, { recursive: true });

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  // Chromium's sandbox cannot start as root, which the tests run as.
  args: process.getuid?.() === 0 ? ['--no-sandbox'] : [],
});

let failed = false;
try {
  await run();
} catch (error) {
  failed = true;
  console.error(`FAILED: ${error.stack || error}`);
  // What each page showed when it failed.
  const pages = browser.contexts().flatMap((c) => c.pages());
  for (const [i, page] of pages.entries()) {
    await page.screenshot({ path: `${SHOTS}/failure-${i}.png`, fullPage: true }).catch(() => {});
  }
  if (pages.length) console.error(`screenshots of the pages: ${SHOTS}/failure-*.png`);
} finally {
  await browser.close();
  clearTimeout(runTimer);
}
process.exit(failed ? 1 : 0);

async function run() {
  // 1. Without a session: the sign-in page, never the dashboard; the API says 401.
  const stranger = await browser.newContext();
  const outside = await stranger.newPage();
  for (const path of ['/ui/', '/ui/machines', '/ui/assets/index.js']) {
    const response = await outside.goto(`${BASE}${path}`);
    check(response.status() === 401, `${path} without a session answered ${response.status()}, not 401`);
    const text = await outside.locator('body').innerText();
    check(text.includes('hearth ui'), `${path} without a session does not say to run hearth ui:\n${text}`);
    check(!(await outside.locator('#app').count()), `${path} without a session served the dashboard`);
  }
  const anonymous = await stranger.request.get(`${BASE}/v1/status`);
  check(anonymous.status() === 401, `/v1/status without a session answered ${anonymous.status()}, not 401`);
  await audit(outside, 'signed-out');
  step('without a session: the sign-in page (401) and /v1/status 401');

  // 2. The link signs in once, and measure the dashboard's first load.
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  const started = Date.now();
  const login = await page.goto(LINK);
  check(login.status() === 200, `the sign-in link answered ${login.status()}`);
  await heading(page, 'Overview');
  await page.locator('[data-count="machines"]', { hasText: /^\d+$/ }).waitFor({ timeout: WAIT_MS });
  const loadMs = Date.now() - started;
  check(new URL(page.url()).pathname === '/ui/', `after sign-in the page is ${page.url()}, not /ui/`);
  const cookies = await context.cookies(BASE);
  const cookie = cookies.find((c) => c.name === 'hearth_session');
  check(cookie, `no hearth_session cookie after sign-in: ${JSON.stringify(cookies)}`);
  check(cookie.httpOnly && cookie.sameSite === 'Strict' && cookie.path === '/', `cookie flags: ${JSON.stringify(cookie)}`);
  check(/^[0-9a-f]{64}$/.test(cookie.value), 'the session id is not 256 bits of hex');
  step(`signed in through the link; HttpOnly, SameSite=Strict, Path=/ cookie; first load ${loadMs} ms`);

  const again = await (await browser.newContext()).newPage();
  const second = await again.goto(LINK);
  const secondText = await again.locator('body').innerText();
  check(second.status() === 403, `the link's second use answered ${second.status()}, not 403`);
  check(secondText.includes('hearth ui'), `the link's second use does not say to run hearth ui again:\n${secondText}`);
  step("the link's second use is refused with a page saying to run hearth ui again");

  // 3. CSRF and Origin.
  const session = await api(page, 'GET', '/v1/ui/session');
  check(session.status === 200 && session.json.csrf_token, `GET /v1/ui/session: ${session.text}`);
  const csrf = session.json.csrf_token;
  const noCsrf = await api(page, 'PUT', '/v1/kv/ui-test/refused', { body: { value: 'no' } });
  check(noCsrf.status === 403 && noCsrf.json?.error?.code === 'csrf', `a PUT without X-CSRF-Token: ${noCsrf.status} ${noCsrf.text}`);
  const noCsrfPost = await api(page, 'POST', '/v1/machines/nothing-here/stop');
  check(noCsrfPost.status === 403, `a POST without X-CSRF-Token answered ${noCsrfPost.status}`);
  check(noCsrfPost.json?.error?.hint, 'the CSRF refusal has no hint');
  // Node's fetch, which lets the test say which Origin it comes from.
  const foreign = await fetch(`${BASE}/v1/kv/ui-test/refused`, {
    method: 'PUT',
    headers: {
      Origin: 'http://evil.example',
      'X-CSRF-Token': csrf,
      Cookie: `hearth_session=${cookie.value}`,
      'Content-Type': 'application/json',
    },
    body: JSON.stringify({ value: 'no' }),
  });
  check(foreign.status === 403, `a PUT from another origin answered ${foreign.status}, not 403`);
  check((await foreign.json()).error.code === 'cross_origin', 'the foreign origin was not refused as cross_origin');
  const refusedKey = await api(page, 'GET', '/v1/kv/ui-test/refused');
  check(refusedKey.status === 404, 'a refused write changed the store');
  step('writes without the CSRF token, or from another origin, are refused (403) and change nothing');

  // 4. Live: a write shows on the overview, through the stream.
  const key = `ui-test/live-${Date.now()}`;
  const putAt = Date.now();
  const put = await api(page, 'PUT', `/v1/kv/${key}`, { body: { value: 'hello from the browser test' }, csrf });
  check(put.status === 200, `PUT with the CSRF token: ${put.status} ${put.text}`);
  await page.locator(`tr[data-key="kv/${key}"]`).waitFor({ timeout: WAIT_MS });
  const liveMs = Date.now() - putAt;
  step(`a write showed on the overview ${liveMs} ms after it was made`);
  const cpu = await page.locator('[data-host="cpu"]').innerText();
  const memory = await page.locator('[data-host="memory"]').innerText();
  check(/^\d+ CPUs?, load [\d.]+ \/ [\d.]+ \/ [\d.]+$/.test(cpu), `the host's CPU line: ${cpu}`);
  check(/GiB free of [\d.]+ GiB/.test(memory), `the host's memory line: ${memory}`);
  step(`the overview shows the host: ${cpu}; memory ${memory.trim()}`);
  await audit(page, 'overview');

  // 5. A break: the test daemon ends each stream after a short lifetime,
  // and the reconnection is held off (aborted) while a write happens. Once
  // it may connect again, the dashboard resumes from the last revision it
  // saw, so the write made during the break shows.
  let blocked = 0;
  let releaseBlocked;
  const firstBlocked = new Promise((resolve) => (releaseBlocked = resolve));
  const follow = (url) => url.pathname === '/v1/events' && url.searchParams.get('follow') === 'true';
  await page.route(follow, (route) => {
    blocked += 1;
    releaseBlocked();
    return route.abort('connectionrefused');
  });
  await withDeadline(firstBlocked, 'the stream to end and the dashboard to try to reconnect');
  await page.locator('[data-connection="reconnecting"]').first().waitFor({ timeout: WAIT_MS });
  const key2 = `ui-test/during-break-${Date.now()}`;
  const put2 = await api(page, 'PUT', `/v1/kv/${key2}`, { body: { value: 'written during the break' }, csrf });
  check(put2.status === 200, `PUT during the break: ${put2.status} ${put2.text}`);
  const resumedRequest = page.waitForRequest((r) => follow(new URL(r.url())), { timeout: WAIT_MS });
  await page.unroute(follow);
  const since = Number(new URL((await resumedRequest).url()).searchParams.get('since'));
  check(since > 0 && since <= put2.json.revision, `resumed with since=${since}, past the write at ${put2.json.revision}`);
  await page.locator(`tr[data-key="kv/${key2}"]`).waitFor({ timeout: WAIT_MS });
  await page.locator('[data-connection="live"]').first().waitFor({ timeout: WAIT_MS });
  step(`after a break (${blocked} refused tries) the stream resumed from revision ${since}; the write made during it showed`);

  // 6. Keyboard: the skip link first, then the views' links.
  await page.keyboard.press('Tab');
  check(
    (await page.evaluate(() => document.activeElement?.textContent)) === 'Skip to content',
    'Tab does not reach the skip link first',
  );
  const machinesLink = page.getByRole('link', { name: 'Machines', exact: true }).first();
  await machinesLink.focus();
  await page.keyboard.press('Enter');
  await heading(page, 'Machines');
  check(
    (await page.evaluate(() => document.activeElement?.tagName)) === 'H1',
    'after switching views by keyboard, focus is not on the view heading',
  );
  await page.locator('table#machines').waitFor({ timeout: WAIT_MS });
  step('keyboard: skip link first; Enter on a view link opens it and focuses its heading');
  step('the machines view renders its table');
  await audit(page, 'machines');

  // Apps and workflows: their tables render, empty for now.
  for (const [label, table] of [
    ['Apps', 'table#apps'],
    ['Workflows', 'table#runs'],
  ]) {
    await page.getByRole('link', { name: label, exact: true }).first().click();
    await heading(page, label);
    await page.locator(table).waitFor({ timeout: WAIT_MS });
    await audit(page, label.toLowerCase());
  }
  step('the apps and workflows views render their tables');

  // 7. Events: filters by key prefix and kind.
  await page.getByRole('link', { name: 'Events', exact: true }).first().click();
  await heading(page, 'Events');
  await page.locator(`tr[data-key="kv/${key2}"]`).waitFor({ timeout: WAIT_MS });
  await page.getByLabel('Key prefix').fill(`kv/${key}`);
  await page.locator(`tr[data-key="kv/${key2}"]`).waitFor({ state: 'detached', timeout: WAIT_MS });
  check((await page.locator(`tr[data-key="kv/${key}"]`).count()) === 1, 'the prefix filter hid the matching event');
  await page.getByLabel('Kind').selectOption('delete');
  await page.locator(`tr[data-key="kv/${key}"]`).waitFor({ state: 'detached', timeout: WAIT_MS });
  await page.getByLabel('Kind').selectOption('all');
  await page.getByLabel('Key prefix').fill('');
  step('the events view filters by key prefix and by kind');
  await audit(page, 'events');

  // Apps, workflows and a machine, managed from their pages, and the
  // search (apps.mjs, workflows.mjs, search.mjs, machines.mjs).
  await apps(page);
  await ops(page, { csrf });
  await workflows(page, { csrf });
  await networks(page);
  await search(page);
  await newMachine(page);
  await machines(page);

  // 8. Figures: the compressed bundle, as the daemon sends it.
  const session_cookie = { Cookie: `hearth_session=${cookie.value}` };
  const html = await (await fetch(`${BASE}/ui/`, { headers: session_cookie })).text();
  const assets = [...html.matchAll(/(?:src|href)="(\/ui\/assets\/[^"]+)"/g)].map((m) => m[1]);
  let gzipBytes = 0;
  for (const path of ['/ui/', ...assets]) {
    // Node's HTTP stack, not the browser's: it gives the bytes on the wire.
    const r = await fetch(`${BASE}${path}`, {
      headers: { 'Accept-Encoding': 'gzip', ...session_cookie },
    });
    const wire = Number(r.headers.get('content-length'));
    check(r.status === 200 && wire > 0, `${path}: ${r.status}, content-length ${wire}`);
    if (path !== '/ui/') {
      check(r.headers.get('content-encoding') === 'gzip', `${path} was not sent gzipped`);
      check(/immutable/.test(r.headers.get('cache-control') || ''), `${path} is not cached as immutable`);
    }
    gzipBytes += wire;
  }
  check(gzipBytes < 300 * 1024, `the compressed bundle is ${gzipBytes} bytes, over 300 KB`);
  step(`figures: compressed bundle ${gzipBytes} bytes in ${assets.length + 1} files; first load to data ${loadMs} ms; write to screen ${liveMs} ms`);

  // 9. Signing out revokes the session: the API refuses it and the
  // dashboard shows the error with its hint instead of a blank page.
  const out = await api(page, 'DELETE', '/v1/ui/session', { csrf });
  check(out.status === 204, `DELETE /v1/ui/session: ${out.status} ${out.text}`);
  const after = await fetch(`${BASE}/v1/status`, { headers: session_cookie });
  check(after.status === 401, `a revoked session's request answered ${after.status}, not 401`);
  // Its open event stream was cut off too, not left to run out its lifetime.
  await page.locator('[data-connection="reconnecting"]').first().waitFor({ timeout: WAIT_MS });
  await page.getByRole('link', { name: 'Machines', exact: true }).first().click();
  const banner = page.getByRole('alert');
  await banner.waitFor({ timeout: WAIT_MS });
  const bannerText = await banner.innerText();
  check(bannerText.includes('hearth ui'), `the error banner has no hint to run hearth ui:\n${bannerText}`);
  await page.screenshot({ path: `${SHOTS}/error-banner-1280-light.png` });
  const reload = await page.reload();
  check(reload.status() === 401, `reloading after sign-out answered ${reload.status()}`);
  step('a revoked session is refused (401), its stream is cut off; the banner shows the error and its hint');
}
