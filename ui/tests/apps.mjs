// Apps in the browser: deploying the hello example by upload through the
// page, its page (versions, rollback, traffic, live log with a filter),
// and the app answering through the ingress.

import { request } from 'node:http';
import { HELLO_WASM, WAIT_MS, api, audit, check, heading, step } from './lib.mjs';

/** A deploy compiles the component in the daemon (a debug build here, on a
 * busy machine): its answer may take longer than a page update. */
const DEPLOY_MS = 30_000;

/** One GET through the apps ingress, to a host name no resolver knows. */
function throughIngress(ingress, host, path) {
  const [hostname, port] = [ingress.slice(0, ingress.lastIndexOf(':')), ingress.slice(ingress.lastIndexOf(':') + 1)];
  return new Promise((resolve, reject) => {
    const req = request({ hostname, port: Number(port), path, headers: { Host: host }, timeout: WAIT_MS }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${host}${path} through ${ingress} timed out`)));
    req.on('error', reject);
    req.end();
  });
}

export async function apps(page) {
  await page.getByRole('link', { name: 'Apps', exact: true }).first().click();
  await heading(page, 'Apps');
  const form = page.getByRole('form', { name: 'Deploy an app' });

  // A file that is not WebAssembly is refused in the page, with a hint.
  await form.getByLabel('Name').fill('hello');
  await form
    .getByLabel('Component (.wasm)')
    .setInputFiles({ name: 'notes.wasm', mimeType: 'application/wasm', buffer: Buffer.from('not a component') });
  await form.getByRole('button', { name: 'Deploy' }).click();
  const refused = form.getByRole('alert');
  await refused.filter({ hasText: 'is not WebAssembly' }).waitFor({ timeout: WAIT_MS });
  check((await refused.innerText()).includes('wasm32-wasip2'), 'the refusal of a non-component has no hint');
  // One the daemon refuses: its message and hint are shown.
  await form.getByLabel('Name').fill('Not_A_Name');
  await form.getByLabel('Component (.wasm)').setInputFiles(HELLO_WASM);
  await form.getByRole('button', { name: 'Deploy' }).click();
  await refused.filter({ hasText: 'becomes a host name' }).waitFor({ timeout: DEPLOY_MS });
  const daemonSays = await refused.locator('p').allInnerTexts();
  check(daemonSays.length === 2 && daemonSays[1].length > 0, `the daemon's refusal lost its hint: ${daemonSays}`);
  step("deploy form: a non-WebAssembly file refused in the page, a bad name refused by the daemon, each with a hint");

  // The real deploy, by upload.
  await form.getByLabel('Name').fill('hello');
  await form.getByRole('button', { name: 'Deploy' }).click();
  await form.locator('[data-deployed="hello"]').waitFor({ timeout: DEPLOY_MS });
  await page.locator('table#apps tr[data-app="hello"]').waitFor({ timeout: WAIT_MS });
  step('the hello example deployed by upload through the page, and listed');
  await audit(page, 'apps-deployed');

  // It answers through the ingress, and its request shows in its live log.
  const status = await api(page, 'GET', '/v1/status');
  const ingress = status.json?.ingress;
  check(ingress, `the daemon has no ingress: ${status.text}`);
  const answer = await throughIngress(ingress, 'hello.localhost', '/from-the-browser-test');
  check(answer.status === 200 && answer.body.includes('Hello from hearth'), `through the ingress: ${answer.status} ${answer.body}`);
  await page.locator('table#apps tr[data-app="hello"] th a').click();
  await heading(page, 'App hello');
  await page.locator('tr[data-version="1"][aria-current="true"]').waitFor({ timeout: WAIT_MS });
  const requestLine = page.locator('#app-log li[data-stream="request"]', { hasText: '/from-the-browser-test' });
  await requestLine.waitFor({ timeout: WAIT_MS });
  step(`hello answered through the ingress (${ingress}); its page shows v1 active and the request in its log`);

  // A second request shows while the page is open: the log is live.
  await throughIngress(ingress, 'hello.localhost', '/second-while-watching');
  await page.locator('#app-log li', { hasText: '/second-while-watching' }).waitFor({ timeout: WAIT_MS });
  const filter = page.getByLabel('Show lines containing');
  await filter.fill('second-while');
  await requestLine.waitFor({ state: 'detached', timeout: WAIT_MS });
  check((await page.locator('#app-log li').count()) === 1, 'the log filter left other lines');
  await filter.fill('no line says this');
  await page.getByText('No line contains "no line says this".').waitFor({ timeout: WAIT_MS });
  await filter.fill('');
  step('the log follows live and filters by text');

  // The traffic charts are there (their samples come every 10 s, so the
  // test does not wait for one).
  check((await page.locator('figure.spark').count()) === 3, 'the page has not three traffic charts');

  // A second version from the app's page, then a rollback to the first.
  const again = page.getByRole('form', { name: 'Deploy a new version of hello' });
  await again.getByLabel('Component (.wasm)').setInputFiles(HELLO_WASM);
  await again.getByRole('button', { name: 'Deploy' }).click();
  await page.locator('tr[data-version="2"][aria-current="true"]').waitFor({ timeout: DEPLOY_MS });
  await page.getByRole('button', { name: 'Roll back to v1' }).click();
  await page.locator('tr[data-version="1"][aria-current="true"]').waitFor({ timeout: WAIT_MS });
  const after = await api(page, 'GET', '/v1/apps/hello');
  check(after.json?.active === 1, `after the rollback the daemon says v${after.json?.active} is active`);
  step('a second version deployed from the app page, then rolled back to v1');

  // Triggers: a schedule the daemon refuses, then a store-event trigger
  // added from the page, fired by a write, and removed.
  const csrf = (await api(page, 'GET', '/v1/ui/session')).json.csrf_token;
  const add = page.getByRole('form', { name: 'Add a trigger to hello' });
  await add.getByLabel('Schedule', { exact: true }).fill('every tuesday');
  await add.getByRole('button', { name: 'Add trigger' }).click();
  const badSchedule = add.getByRole('alert');
  await badSchedule.waitFor({ timeout: WAIT_MS });
  check((await badSchedule.innerText()).trim().split('\n').length >= 2, 'the refused schedule has no hint');
  await add.getByRole('combobox', { name: /^Kind/ }).selectOption('event');
  await add.getByLabel('Key prefix').fill('kv/ui-trigger/');
  await add.getByLabel('Path called (optional)').fill('/from-an-event');
  await add.getByRole('button', { name: 'Add trigger' }).click();
  const row = page.locator('table#triggers tr[data-kind="event"]', { hasText: 'kv/ui-trigger/' });
  await row.waitFor({ timeout: WAIT_MS });
  const write = await api(page, 'PUT', '/v1/kv/ui-trigger/one', { body: { value: 'fire' }, csrf });
  check(write.status === 200, `PUT kv/ui-trigger/one: ${write.status} ${write.text}`);
  await page.locator('#app-log li', { hasText: '/from-an-event' }).first().waitFor({ timeout: WAIT_MS });
  await audit(page, 'app');
  page.once('dialog', (dialog) => dialog.accept());
  await row.getByRole('button', { name: /^Remove trigger / }).click();
  await row.waitFor({ state: 'detached', timeout: WAIT_MS });
  step('a bad schedule refused with a hint; an event trigger added from the page called hello on a write, then removed');
}
