// Workflows in the browser: a run of the approval example (deployed twice
// by the Rust test) started from the view's form and decided by two votes
// sent as signals from its page, its journal shown as a timeline; the runs
// list's status filter; a migration and a cancel.

import { APPROVAL, WAIT_MS, api, audit, check, heading, step } from './lib.mjs';

const INPUT = { request: 'a new laptop', approvers: ['ann', 'bob', 'cid'], timeout: '7d' };

async function start(page, csrf, id) {
  const started = await api(page, 'POST', `/v1/workflows/${APPROVAL}/runs`, {
    body: { id, input: JSON.stringify(INPUT) },
    csrf,
  });
  check(started.status === 200, `starting run ${id}: ${started.status} ${started.text}`);
}

/** Sends a vote from the run's page, once the run waits for one. */
async function vote(page, who, { decides = false } = {}) {
  await page.locator('#timeline [data-step="waiting"]', { hasText: 'signal "vote"' }).waitFor({ timeout: WAIT_MS });
  const form = page.getByRole('form', { name: 'Send a signal' });
  const name = form.getByLabel('Signal');
  check((await name.inputValue()) === 'vote', 'the signal field does not offer the signal the run waits for');
  await form.getByLabel('Data').fill(JSON.stringify({ who, approve: true }));
  await form.getByRole('button', { name: 'Send signal' }).click();
  // A deciding vote ends the run, and its page then drops the form at once.
  if (!decides) await form.getByRole('status').filter({ hasText: 'Sent vote' }).waitFor({ timeout: WAIT_MS });
  await page.locator('#timeline li', { hasText: `${who} approves` }).waitFor({ timeout: WAIT_MS });
}

export async function workflows(page, { csrf }) {
  // A run started from the view's form opens its page.
  await page.getByRole('link', { name: 'Workflows', exact: true }).first().click();
  await heading(page, 'Workflows');
  const form = page.getByRole('form', { name: 'Start a run' });
  await form.getByLabel('Workflow').selectOption(APPROVAL);
  await form.getByLabel('Run id (optional)').fill('laptop');
  await form.getByLabel('Input (JSON)').fill('{"request": ');
  await form.getByRole('button', { name: 'Start run' }).click();
  await form.getByRole('alert').filter({ hasText: 'not JSON' }).waitFor({ timeout: WAIT_MS });
  await form.getByLabel('Input (JSON)').fill(JSON.stringify(INPUT));
  await form.getByRole('button', { name: 'Start run' }).click();
  await heading(page, 'Run laptop');
  step('a run started from the workflows view (after its bad input was refused) opens its page');
  await page.getByRole('link', { name: 'Workflows', exact: true }).first().click();
  await heading(page, 'Workflows');

  // The runs list, filtered by status: the run waits for votes.
  const status = page.getByLabel('Status');
  await status.selectOption('waiting');
  await page.locator('table#runs tr[data-run="laptop"]').waitFor({ timeout: WAIT_MS });
  await status.selectOption('completed');
  await page.locator('table#runs tr[data-run="laptop"]').waitFor({ state: 'detached', timeout: WAIT_MS });
  await page.getByText('No completed runs.').waitFor({ timeout: WAIT_MS });
  await status.selectOption('all');
  step('the runs list filters by status');

  // The run's page: the timeline says what it waits for.
  await page.locator('table#runs tr[data-run="laptop"] a').click();
  await heading(page, 'Run laptop');
  await page.locator('#timeline [data-step="waiting"]', { hasText: 'signal "vote"' }).waitFor({ timeout: WAIT_MS });
  check((await page.locator('#run-input').innerText()).includes('a new laptop'), 'the input is not shown');
  await audit(page, 'run-waiting');

  // Two of three approve: the run completes, and the timeline shows it.
  await vote(page, 'ann');
  step('a vote sent from the page; the timeline shows it taken and the run waiting for the next');
  await vote(page, 'bob', { decides: true });
  await page.locator('#timeline [data-step="completed"]').waitFor({ timeout: WAIT_MS });
  await page.locator('[data-status="completed"]').waitFor({ timeout: WAIT_MS });
  const output = JSON.parse(await page.locator('#run-output').innerText());
  check(output.decision === 'approved', `the output: ${JSON.stringify(output)}`);
  check(
    JSON.stringify(output.approved_by) === JSON.stringify(['ann', 'bob']),
    `approved by: ${JSON.stringify(output.approved_by)}`,
  );
  check((await page.getByRole('form', { name: 'Send a signal' }).count()) === 0, 'an ended run still offers signals');
  const steps = await page.locator('#timeline li').count();
  step(`two votes from the page completed the run: approved by ann and bob, ${steps} entries in its timeline`);
  await audit(page, 'run-completed');

  // A run whose id has a dot, loaded by its address: migrated to the
  // other version, then cancelled after a confirmation.
  await start(page, csrf, 'lunch.1');
  await page.goto(page.url().replace(/\/ui\/runs\/.*$/, '/ui/runs/lunch.1'));
  await heading(page, 'Run lunch.1');
  await page.locator('#timeline [data-step="waiting"]').waitFor({ timeout: WAIT_MS });
  const before = (await api(page, 'GET', '/v1/runs/lunch.1')).json.version;
  const migrate = page.getByRole('form', { name: 'Migrate the run' });
  const target = before === 1 ? 2 : 1;
  await migrate.getByLabel('Version').selectOption(String(target));
  await migrate.getByRole('button', { name: 'Migrate' }).click();
  await migrate.getByRole('status').filter({ hasText: `Moved to v${target}` }).waitFor({ timeout: WAIT_MS });
  await page.locator('dd', { hasText: `${APPROVAL} v${target}` }).waitFor({ timeout: WAIT_MS });
  const after = (await api(page, 'GET', '/v1/runs/lunch.1')).json.version;
  check(after === target, `after migrating, the run is on v${after}, not v${target}`);
  step(`a run loaded by an address with a dot; migrated from v${before} to v${target} from its page`);
  page.once('dialog', (dialog) => dialog.accept());
  await page.getByRole('button', { name: 'Cancel the run' }).click();
  await page.locator('[data-status="cancelled"]').waitFor({ timeout: WAIT_MS });
  await page.locator('#timeline [data-step="cancelled"]').waitFor({ timeout: WAIT_MS });
  step('a run cancelled from its page, after a confirmation');
}
