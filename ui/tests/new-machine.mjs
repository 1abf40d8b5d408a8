// A machine created from the machines view's form: a name the daemon
// refuses is shown with its hint; then one made without starting opens
// its page, and is removed from it.

import { api, audit, check, heading, step, WAIT_MS } from './lib.mjs';

export async function newMachine(page) {
  await page.getByRole('link', { name: 'Machines', exact: true }).first().click();
  await heading(page, 'Machines');
  await page.locator('#create-machine summary').click();
  const form = page.getByRole('form', { name: 'Create a machine' });
  await form.getByLabel('Image').locator('option').first().waitFor({ state: 'attached', timeout: WAIT_MS });
  await form.getByLabel('Name (optional)').fill('Not A Name');
  await form.getByLabel('Start it now').uncheck();
  await form.getByRole('button', { name: 'Create machine' }).click();
  const refused = form.getByRole('alert');
  await refused.waitFor({ timeout: WAIT_MS });
  check((await refused.innerText()).trim().split('\n').length >= 2, 'the refused name has no hint');
  await audit(page, 'machines-create');

  await form.getByLabel('Name (optional)').fill('ui-made');
  await form.getByLabel('Memory (MiB)').fill('256');
  await form.getByRole('button', { name: 'Create machine' }).click();
  await heading(page, 'Machine ui-made');
  const made = (await api(page, 'GET', '/v1/machines/ui-made')).json;
  check(made.desired === 'stopped' && made.memory_mib === 256, `the machine made: ${JSON.stringify(made)}`);
  step(`a bad name refused with its hint; ui-made created from the form (${made.image}, 256 MiB, not started) opens its page`);

  page.once('dialog', (dialog) => dialog.accept());
  await page.getByRole('button', { name: 'Remove', exact: true }).click();
  await heading(page, 'Machines');
  await page.locator('table#machines tr[data-machine="ui-made"]').waitFor({ state: 'detached', timeout: WAIT_MS });
  step('and removed from its page');
}
