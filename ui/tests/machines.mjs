// A machine's page in the browser: the Rust test boots one (MACHINE);
// its page shows its state and its console live, and stops, starts,
// restarts and removes it.

import { MACHINE, api, audit, check, heading, step } from './lib.mjs';

/** A boot, or a shutdown, of a small Debian guest (TCG without KVM). */
const MACHINE_MS = 60_000;

async function state(page, value) {
  await page.locator(`[data-state="${value}"]`).waitFor({ timeout: MACHINE_MS });
}

export async function machines(page) {
  await page.getByRole('link', { name: 'Machines', exact: true }).first().click();
  await heading(page, 'Machines');
  await page.locator(`table#machines tr[data-machine="${MACHINE}"] th a`).click();
  await heading(page, `Machine ${MACHINE}`);
  await state(page, 'running');
  // The console, from its last lines on: the guest's boot is on it.
  await page.locator('[data-console-state="live"]').waitFor({ timeout: MACHINE_MS });
  await page.locator('#console', { hasText: /\S+/ }).waitFor({ timeout: MACHINE_MS });
  const before = (await page.locator('#console').innerText()).length;
  check(before > 0, 'the console is empty');
  await audit(page, 'machine');

  await page.getByRole('button', { name: 'Stop', exact: true }).click();
  await state(page, 'stopped');
  // The guest's shutdown arrived on the console while the page was open.
  const after = (await page.locator('#console').innerText()).length;
  check(after > before, `the console did not grow while the machine stopped (${before} → ${after} characters)`);
  step('a machine page shows the machine running and its console live; Stop stops it');

  await page.getByRole('button', { name: 'Start', exact: true }).click();
  await state(page, 'running');
  const first = (await api(page, 'GET', `/v1/machines/${MACHINE}`)).json;
  await page.getByRole('button', { name: 'Restart', exact: true }).click();
  // Restarted: running again, in a new VM process.
  await page.waitForFunction(
    async ({ name, pid }) => {
      const m = await (await fetch(`/v1/machines/${name}`)).json();
      return m.state === 'running' && m.pid !== pid;
    },
    { name: MACHINE, pid: first.pid },
    { timeout: 2 * MACHINE_MS, polling: 500 },
  );
  await page.getByRole('button', { name: 'Restart', exact: true }).waitFor({ timeout: MACHINE_MS });
  await state(page, 'running');
  step('Start and Restart bring it back to running');

  page.once('dialog', (dialog) => dialog.accept());
  await page.getByRole('button', { name: 'Remove', exact: true }).click();
  await heading(page, 'Machines');
  await page.locator(`table#machines tr[data-machine="${MACHINE}"]`).waitFor({ state: 'detached', timeout: MACHINE_MS });
  step('Remove, after a confirmation, removes it and returns to the machines');
}
