// The networks views in the browser: the table of networks, a network
// drawn with its machines, a partition made from the drawing and drawn on
// the link it cuts, a loss badge, and both healed from the drawing. The
// Rust test made the network and its two machines (NETWORK, NET_MACHINES).

import { NETWORK, NET_MACHINES, SHOTS, WAIT_MS, api, audit, check, heading, step } from './lib.mjs';

const [A, B] = NET_MACHINES;

async function faults(page) {
  const r = await api(page, 'GET', '/v1/faults');
  check(r.status === 200, `GET /v1/faults: ${r.status} ${r.text}`);
  return r.json.faults;
}

export async function networks(page) {
  // 1. The table.
  await page.getByRole('link', { name: 'Networks', exact: true }).first().click();
  await heading(page, 'Networks');
  const row = page.locator(`table#networks tr[data-network="${NETWORK}"]`);
  await row.waitFor({ timeout: WAIT_MS });
  await row.locator('[data-count="machines"]', { hasText: /^2$/ }).waitFor({ timeout: WAIT_MS });
  const rowText = await row.innerText();
  check(/10\.246\.16\.0\/24/.test(rowText), `the networks row lacks the subnet:\n${rowText}`);
  step(`the networks view lists ${NETWORK} with its subnet and 2 machines`);
  await audit(page, 'networks');

  // 2. The network drawn: its bridge and both machines, linked to it.
  await row.getByRole('link', { name: NETWORK, exact: true }).click();
  await heading(page, `Network ${NETWORK}`);
  await page.locator(`svg[data-network="${NETWORK}"] [data-switch="${NETWORK}"]`).waitFor({ timeout: WAIT_MS });
  for (const m of [A, B]) {
    await page.locator(`[data-machine-node="${m}"]`).waitFor({ timeout: WAIT_MS });
    await page.locator(`[data-link="${m}"]`).waitFor({ state: 'attached', timeout: WAIT_MS });
  }
  // Once `GET /v1/faults` is read, and not before, nothing is drawn.
  await page.locator('[data-faults="none"]').waitFor({ timeout: WAIT_MS });
  check((await page.locator('[data-fault]').count()) === 0, 'faults are drawn before any was made');
  step(`the network page draws ${NETWORK}'s bridge, ${A} and ${B}, each linked to it`);

  // 3. Select a by keyboard and partition it from b from the drawing.
  const nodeA = page.getByRole('button', { name: new RegExp(`^Machine ${A},`) });
  await nodeA.focus();
  await page.keyboard.press('Enter');
  const panelA = page.locator(`#fault-panel[data-selected="${A}"]`);
  await panelA.waitFor({ timeout: WAIT_MS });
  check((await nodeA.getAttribute('aria-pressed')) === 'true', `${A} is not marked selected`);
  await panelA.getByLabel(B, { exact: true }).check();
  const cutAt = Date.now();
  await panelA.getByRole('button', { name: 'Partition', exact: true }).click();
  const between = [A, B].sort().join(' ');
  const cut = page.locator(`[data-fault="partition"][data-between="${between}"]`);
  await cut.waitFor({ timeout: WAIT_MS });
  const drawnMs = Date.now() - cutAt;
  check((await cut.textContent()).includes('partitioned'), 'the cut has no "partitioned" label');
  await page.locator('table#faults tr[data-fault-kind="partition"]').waitFor({ timeout: WAIT_MS });
  const made = await faults(page);
  check(made.length === 1, `GET /v1/faults after the partition: ${JSON.stringify(made)}`);
  const p = made[0].partition;
  check(
    made[0].kind === 'partition' && p && p.machines.join() === A && p.from.join() === B && p.both_ways,
    `the partition's targets are not ${A} ✕ ${B}: ${JSON.stringify(made[0])}`,
  );
  step(`selected ${A} by keyboard, partitioned it from ${B}: drawn on the ${A}–${B} link ${drawnMs} ms after the click; GET /v1/faults has it`);

  // 4. A loss on b, from the drawing: a badge on b's link.
  await page.locator(`[data-machine-node="${B}"]`).click();
  const panelB = page.locator(`#fault-panel[data-selected="${B}"]`);
  await panelB.waitFor({ timeout: WAIT_MS });
  await panelB.getByLabel('Loss %').fill('30');
  await panelB.getByRole('button', { name: 'Add loss', exact: true }).click();
  await page.locator(`[data-fault="loss"][data-machine="${B}"]`, { hasText: 'loss 30%' }).waitFor({ timeout: WAIT_MS });
  await page.locator('table#faults tr[data-fault-kind="loss"]').waitFor({ timeout: WAIT_MS });
  const withLoss = await faults(page);
  const loss = withLoss.find((f) => f.kind === 'loss');
  check(withLoss.length === 2 && loss?.loss?.machine === B && loss.loss.percent === 30, `after the loss: ${JSON.stringify(withLoss)}`);
  // What the API refuses is shown with its hint: a loss over 100%.
  await panelB.getByLabel('Loss %').fill('150');
  await panelB.getByLabel('Loss %').evaluate((input) => input.removeAttribute('max'));
  await panelB.getByRole('button', { name: 'Add loss', exact: true }).click();
  const refused = panelB.getByRole('alert');
  await refused.waitFor({ timeout: WAIT_MS });
  check((await refused.innerText()).includes('150'), `the refusal does not say why:\n${await refused.innerText()}`);
  check((await faults(page)).length === 2, 'a refused fault was made');
  step(`a 30% loss on ${B} is drawn as a badge on its link; a 150% loss is refused with the API's message`);

  await page.screenshot({ path: `${SHOTS}/network-faults-1280-light.png`, fullPage: true });
  await page.setViewportSize({ width: 390, height: 860 });
  await page.screenshot({ path: `${SHOTS}/network-faults-390-light.png`, fullPage: true });
  await page.setViewportSize({ width: 1280, height: 860 });
  await audit(page, 'network');

  // 5. Heal both from the drawing's panel: the drawing is clean again.
  for (const kind of ['partition', 'loss']) {
    await panelB.getByRole('button', { name: new RegExp(`^Heal ${kind} `) }).click();
    await page.locator(`[data-fault="${kind}"]`).first().waitFor({ state: 'detached', timeout: WAIT_MS });
  }
  await page.locator('[data-faults="none"]').waitFor({ timeout: WAIT_MS });
  check((await page.locator('svg [data-fault]').count()) === 0, 'faults are still drawn after healing');
  const left = await faults(page);
  check(left.length === 0, `GET /v1/faults after healing: ${JSON.stringify(left)}`);
  step(`healed the partition and the loss from ${B}'s panel: the drawing is clean, GET /v1/faults is empty`);
}
