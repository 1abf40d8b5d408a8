// Services, config and alerts in the browser, each set up through the
// API from the page (no machine needed):
// - a registered service whose instances come, fail a heartbeat, lapse
//   and are deregistered from its page, live, with its health history;
// - a plain config entry and a secret: the secret is a mask and its value
//   is nowhere in the page; the plain one changed from the page, its
//   history, the diff between two versions, a rollback and a removal;
// - an alert rule made to fire by a kv write: firing on the Alerts view and
//   in the overview's panel, silenced from the page, the silence expired.

import { WAIT_MS, api, audit, check, heading, step } from './lib.mjs';

const SERVICE = 'checkout';
/** A secret's value: it must appear nowhere in the page or the API's answers. */
const SECRET = `s3cret-${Date.now().toString(36)}-do-not-show`;
const RULE = 'ops-alarm';
const ALARM_KEY = 'ops-test/alarm';
/** How long a lapsed registration (TTL 1 s) takes to leave, at most. */
const LAPSE_MS = 20_000;

async function ok(page, method, path, body, csrf, what) {
  const r = await api(page, method, path, { body, csrf });
  check(r.status >= 200 && r.status < 300, `${what}: ${method} ${path} answered ${r.status} ${r.text}`);
  return r.json;
}

function register(page, csrf, id, port, ttl_s = 120) {
  return ok(
    page,
    'POST',
    `/v1/services/${SERVICE}/instances`,
    { id, address: '127.0.0.1', port, ttl_s },
    csrf,
    `registering ${id}`,
  );
}

async function nav(page, label) {
  await page.getByRole('link', { name: label, exact: true }).first().click();
  await heading(page, label);
}

async function services(page, csrf) {
  await register(page, csrf, `${SERVICE}-1`, 9101);
  await nav(page, 'Services');
  const row = page.locator(`table#services tr[data-service="${SERVICE}"]`);
  await row.locator('[data-instances="1/1"]').waitFor({ timeout: WAIT_MS });
  check((await row.innerText()).includes('registered'), `the services table does not say ${SERVICE} is registered`);
  await register(page, csrf, `${SERVICE}-2`, 9102);
  await row.locator('[data-instances="2/2"]').waitFor({ timeout: WAIT_MS });
  await row.getByText('127.0.0.1:9102').waitFor({ timeout: WAIT_MS });
  step('the services table lists a registered service, its instances passing live (1/1, then 2/2) and their addresses');
  await audit(page, 'services');

  await row.locator('th a').click();
  await heading(page, `Service ${SERVICE}`);
  const instance = (id) => page.locator(`table#instances tr[data-instance="${id}"]`);
  await instance(`${SERVICE}-1`).locator('[data-health="passing"]').waitFor({ timeout: WAIT_MS });
  await instance(`${SERVICE}-2`).locator('[data-health="passing"]').waitFor({ timeout: WAIT_MS });
  // A third comes while the page is open, and lapses: its TTL is 1 s.
  await register(page, csrf, `${SERVICE}-3`, 9103, 1);
  await instance(`${SERVICE}-3`).waitFor({ timeout: WAIT_MS });

  // A heartbeat says critical: the page shows it, with the output.
  await ok(
    page,
    'PUT',
    `/v1/services/${SERVICE}/instances/${SERVICE}-1/heartbeat`,
    { health: 'critical', output: 'disk full on /var' },
    csrf,
    'a critical heartbeat',
  );
  await instance(`${SERVICE}-1`).locator('[data-health="critical"]').waitFor({ timeout: WAIT_MS });
  check(
    (await instance(`${SERVICE}-1`).innerText()).includes('disk full on /var'),
    "the critical instance does not show its check's output",
  );
  const history = page.locator('#service-history');
  await history
    .locator(`tr[data-moment="critical"][data-instance="${SERVICE}-1"]`, { hasText: 'disk full on /var' })
    .waitFor({ timeout: WAIT_MS });
  await page.locator(`[data-passing="1/3"], [data-passing="1/2"]`).first().waitFor({ timeout: WAIT_MS });
  step('an instance turned critical by its heartbeat shows critical with its output, live, and in the health history');

  await instance(`${SERVICE}-3`).waitFor({ state: 'detached', timeout: LAPSE_MS });
  await history.locator(`tr[data-moment="expired"][data-instance="${SERVICE}-3"]`).first().waitFor({ timeout: WAIT_MS });
  step("an instance whose heartbeats lapsed leaves the page by itself; the history says it expired");

  page.once('dialog', (dialog) => dialog.accept());
  await page.getByRole('button', { name: `Deregister ${SERVICE}-2` }).click();
  await instance(`${SERVICE}-2`).waitFor({ state: 'detached', timeout: WAIT_MS });
  await history.locator(`tr[data-moment="deregistered"][data-instance="${SERVICE}-2"]`).first().waitFor({ timeout: WAIT_MS });
  await page.locator('[data-passing="0/1"]').waitFor({ timeout: WAIT_MS });
  // Newest first.
  const first = await history.locator('tbody tr').first().getAttribute('data-moment');
  check(first === 'deregistered', `the health history is not newest first: its first line is ${first}`);
  step('Deregister, after a confirmation, takes an instance out; the history shows it, newest first');
  await audit(page, 'service');
}

async function config(page, csrf) {
  const entry = (key) => page.locator(`[data-layer="global"] tr[data-key="${key}"]`);
  const first = await ok(page, 'PUT', '/v1/config/entries/ops.greeting?layer=global', { text: 'hello' }, csrf, 'a plain entry');
  await ok(page, 'PUT', '/v1/config/entries/ops.token?layer=global', { text: SECRET, secret: true }, csrf, 'a secret');
  await ok(page, 'PUT', '/v1/config/entries/ops.scratch?layer=global', { text: '42' }, csrf, 'an entry to remove');
  for (const path of ['/v1/config/entries', '/v1/config/history', `/v1/config/diff?from=${first.revision}`, '/v1/config']) {
    const r = await api(page, 'GET', path);
    check(r.status === 200 && !r.text.includes(SECRET), `GET ${path} sent the secret's value (or failed: ${r.status})`);
  }
  await nav(page, 'Config');
  await entry('ops.greeting').getByText('"hello"').waitFor({ timeout: WAIT_MS });
  await entry('ops.token').locator('[data-secret]').waitFor({ timeout: WAIT_MS });
  check(!(await page.content()).includes(SECRET), "the config page's HTML holds the secret's value");
  step("config: a plain entry shows its value, a secret a mask; the secret's value is in no API answer and not in the page");

  // Changed from the page: Edit fills the form in.
  await page.getByRole('button', { name: 'Edit ops.greeting in global' }).click();
  const form = page.getByRole('form', { name: 'Set an entry' });
  // The form is filled in by an effect after the click's render: wait for it.
  const filled = await form
    .getByLabel('Key')
    .evaluate((input, want) => new Promise((resolve) => {
      const deadline = Date.now() + 10_000;
      const look = () => (input.value === want || Date.now() > deadline ? resolve(input.value) : requestAnimationFrame(look));
      look();
    }), 'ops.greeting');
  check(filled === 'ops.greeting', 'Edit did not fill the key in');
  await form.getByLabel(/^Value/).fill('bonjour');
  await form.getByRole('button', { name: 'Set entry' }).click();
  await form.getByRole('status').filter({ hasText: 'Set ops.greeting in global' }).waitFor({ timeout: WAIT_MS });
  await entry('ops.greeting').getByText('"bonjour"').waitFor({ timeout: WAIT_MS });
  const changes = (await api(page, 'GET', '/v1/config/history?prefix=ops.greeting')).json.entries;
  const [second, before] = changes.map((e) => e.revision);
  check(before === first.revision, `the history of ops.greeting: ${JSON.stringify(changes)}`);
  const changed = page.locator(`#config-history tr[data-revision="${second}"] li[data-key="ops.greeting"][data-change="changed"]`);
  await changed.waitFor({ timeout: WAIT_MS });
  const line = await changed.innerText();
  check(line.includes('hello') && line.includes('bonjour'), `the history line: ${line}`);
  step(`a plain entry changed from the page; the history shows it at revision ${second}, hello → bonjour`);

  // A consumer's merged view: its own layer wins over global.
  await ok(page, 'PUT', '/v1/config/entries/ops.greeting?layer=app:shop', { text: '"hi, shop"' }, csrf, 'a scoped entry');
  await page.locator('[data-layer="app:shop"] tr[data-key="ops.greeting"]').waitFor({ timeout: WAIT_MS });
  await page.getByRole('form', { name: 'Choose a scope' }).getByLabel('Scope').selectOption('app:shop');
  const merged = page.locator('#config-merged[data-scope="app:shop"]');
  await merged.locator('tr[data-key="ops.greeting"]', { hasText: 'hi, shop' }).waitFor({ timeout: WAIT_MS });
  check((await merged.locator('tr[data-key="ops.greeting"]').innerText()).includes('app:shop'), 'the merged view does not say which layer');
  await merged.locator('tr[data-key="ops.token"] [data-secret]').waitFor({ timeout: WAIT_MS });
  step("app:shop's merged view: its own layer wins over global, each key with its layer, the secret masked");

  // The diff between the two versions: the change, and the secret added masked.
  const compare = page.getByRole('form', { name: 'Compare two versions' });
  await compare.getByLabel('From').selectOption(String(first.revision));
  await compare.getByLabel('To').selectOption(String(second));
  await compare.getByRole('button', { name: 'Show the diff' }).click();
  const diff = page.locator(`#config-diff[data-from="${first.revision}"][data-to="${second}"]`);
  await diff.locator('li[data-key="ops.greeting"][data-change="changed"]').waitFor({ timeout: WAIT_MS });
  await diff.locator('li[data-key="ops.token"][data-change="added"] [data-secret]').waitFor({ timeout: WAIT_MS });
  check(!(await page.content()).includes(SECRET), "the diff put the secret's value in the page");
  step(`the diff from revision ${first.revision} to ${second}: ops.greeting changed, ops.token added and masked`);
  await audit(page, 'config');

  page.once('dialog', (dialog) => dialog.accept());
  await page.getByRole('button', { name: `Roll back ops.greeting to r${first.revision} in global` }).click();
  await entry('ops.greeting').getByText('"hello"').waitFor({ timeout: WAIT_MS });
  page.once('dialog', (dialog) => dialog.accept());
  await page.getByRole('button', { name: 'Remove ops.scratch from global' }).click();
  await entry('ops.scratch').waitFor({ state: 'detached', timeout: WAIT_MS });
  step('a rollback to the first version and a removal, each after a confirmation, show live');
}

async function alerts(page, csrf) {
  const toml = [
    `event = { prefix = "kv/${ALARM_KEY}" }`,
    'labels = { severity = "warning" }',
    'summary = "alarm raised at {{ key }}: {{ value.level }}"',
    'notify = ["history"]',
    'group_wait = "0s"',
  ].join('\n');
  await ok(page, 'PUT', `/v1/alerts/rules/${RULE}`, { toml }, csrf, 'an alert rule');
  await ok(page, 'PUT', `/v1/kv/${ALARM_KEY}`, { value: JSON.stringify({ level: 'high' }) }, csrf, 'the alarm');

  await nav(page, 'Overview');
  const panel = page.locator('#what-fired');
  await panel.locator(`li[data-rule="${RULE}"]`, { hasText: 'alarm raised at' }).waitFor({ timeout: WAIT_MS });
  const firing = (await api(page, 'GET', '/v1/alerts')).json.alerts.filter((a) => a.phase === 'firing').length;
  await panel.locator(`[data-firing-count="${firing}"]`).waitFor({ timeout: WAIT_MS });
  check(firing >= 1, 'no alert fires');
  step(`the overview's "what fired" panel shows ${firing} firing and the rule's notification`);
  await audit(page, 'overview-fired');

  await panel.getByRole('link', { name: /firing/ }).click();
  await heading(page, 'Alerts');
  const alert = page.locator(`[data-group="${RULE}"] tr[data-rule="${RULE}"][data-phase="firing"]`);
  await alert.waitFor({ timeout: WAIT_MS });
  const text = await alert.innerText();
  check(text.includes('severity=warning') && text.includes('alarm raised at kv/ops-test/alarm: high'), `the alert: ${text}`);
  await page.locator(`#alert-rules tr[data-rule="${RULE}"]`, { hasText: `kv/${ALARM_KEY}` }).waitFor({ timeout: WAIT_MS });
  await page.locator(`#alert-history tr[data-rule="${RULE}"]`).first().waitFor({ timeout: WAIT_MS });
  step('the alert fires on the Alerts view, grouped by its rule, with labels and summary; its rule and history show');

  await alert.getByRole('button', { name: /^Silence / }).click();
  const form = page.getByRole('form', { name: `Silence ${RULE}` });
  check((await form.getByLabel(/^Matchers/).inputValue()).includes(`rule=${RULE}`), 'the silence is not filled in from the labels');
  await form.getByLabel('For').fill('1h');
  await form.getByLabel('Comment').fill('looking into it');
  await form.getByRole('button', { name: 'Create the silence' }).click();
  await page.locator(`[data-group="${RULE}"] tr[data-rule="${RULE}"][data-muted="true"]`).waitFor({ timeout: WAIT_MS });
  const silence = page.locator('#silences tr[data-active="true"]', { hasText: 'looking into it' });
  await silence.waitFor({ timeout: WAIT_MS });
  const id = await silence.getAttribute('data-silence');
  step(`a silence made from the firing alert (1h, with a comment) mutes it: ${id}`);
  await audit(page, 'alerts');

  page.once('dialog', (dialog) => dialog.accept());
  await page.getByRole('button', { name: `Expire silence ${id}` }).click();
  await page.locator(`#silences tr[data-silence="${id}"][data-active="false"]`).waitFor({ timeout: WAIT_MS });
  await page.locator(`[data-group="${RULE}"] tr[data-rule="${RULE}"][data-muted="false"]`).waitFor({ timeout: WAIT_MS });
  step('expiring the silence, after a confirmation, unmutes the alert');
}

export async function ops(page, { csrf }) {
  await services(page, csrf);
  await config(page, csrf);
  await alerts(page, csrf);
}
