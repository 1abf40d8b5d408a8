// Global search from the header of every page: `/` focuses it; a machine
// is found by name and by address, a run by an id with a dot, and the
// arrow keys and Enter open what was found.

import { MACHINE, NET_MACHINES, SHOTS, WAIT_MS, api, audit, check, heading, step } from './lib.mjs';

async function searchFor(page, text) {
  // `/` from the page (not from a field) focuses the search box.
  await page.locator('main h1').first().focus();
  await page.keyboard.press('/');
  const box = page.getByRole('combobox', { name: 'Search by name, id or address' });
  check(await box.evaluate((el) => el === document.activeElement), '/ does not focus the search box');
  await box.fill(text);
  return box;
}

export async function search(page) {
  const box = await searchFor(page, MACHINE);
  const machine = page.locator(`#search-hits [data-kind="machine"][data-name="${MACHINE}"]`);
  await machine.waitFor({ timeout: WAIT_MS });
  await audit(page, 'search');
  await page.screenshot({ path: `${SHOTS}/search-1280-light.png` });
  await box.press('Enter');
  await heading(page, `Machine ${MACHINE}`);
  step(`"/" focuses the search; "${MACHINE}" finds the machine, and Enter opens its page`);

  // A machine on the test's network, by its address.
  const onNetwork = NET_MACHINES[0];
  const { nics } = (await api(page, 'GET', `/v1/machines/${onNetwork}`)).json;
  check(nics.length > 0, `${onNetwork} has no address to search by`);
  await searchFor(page, nics[0].ip);
  await page.locator(`#search-hits [data-kind="machine"][data-name="${onNetwork}"]`).waitFor({ timeout: WAIT_MS });
  step(`${onNetwork}'s address ${nics[0].ip} finds it`);

  // A run, by an id with a dot, chosen with the arrow keys.
  const box2 = await searchFor(page, 'lunch.');
  const run = page.locator('#search-hits [data-kind="run"][data-name="lunch.1"]');
  await run.waitFor({ timeout: WAIT_MS });
  const index = await run.evaluate((el) => [...el.parentElement.children].indexOf(el));
  for (let i = 0; i < index; i++) await box2.press('ArrowDown');
  check((await run.getAttribute('aria-selected')) === 'true', 'the arrow keys do not select the run');
  await box2.press('Enter');
  await heading(page, 'Run lunch.1');
  step('a run found by its id, chosen with the arrow keys, opens its page');

  await searchFor(page, 'no-such-thing-anywhere');
  await page.locator('#search-hits .search-none').waitFor({ timeout: WAIT_MS });
  await page.keyboard.press('Escape');
  await page.locator('#search-hits').waitFor({ state: 'detached', timeout: WAIT_MS });
  step('a search that finds nothing says so; Escape closes it');
}
