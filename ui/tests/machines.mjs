// A machine's page in the browser: the Rust test boots one (MACHINE);
// its page shows its state and its console live, opens a terminal into
// it, stops, starts and restarts it, snapshots it and restores the
// snapshot as another machine, and removes them.

import { MACHINE, SHOTS, WAIT_MS, api, audit, check, heading, step } from './lib.mjs';

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

  await terminal(page);

  await page.getByRole('button', { name: 'Stop', exact: true }).click();
  await state(page, 'stopped');
  // The guest's shutdown arrives on the console while the page is open
  // (its last lines may come just after the state says stopped).
  const grew = await page
    .waitForFunction((n) => (document.querySelector('#console')?.innerText ?? '').length > n, before, {
      timeout: WAIT_MS,
    })
    .then(() => true, () => false);
  const after = (await page.locator('#console').innerText()).length;
  check(grew, `the console did not grow while the machine stopped (${before} → ${after} characters)`);
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

  await snapshot(page);

  page.once('dialog', (dialog) => dialog.accept());
  await page.getByRole('button', { name: 'Remove', exact: true }).click();
  await heading(page, 'Machines');
  await page.locator(`table#machines tr[data-machine="${MACHINE}"]`).waitFor({ state: 'detached', timeout: MACHINE_MS });
  step('Remove, after a confirmation, removes it and returns to the machines');
}

/** The terminal's chunk (script and style), as the daemon sends it gzipped. */
async function chunkBytes(page) {
  const paths = await page.evaluate(() =>
    performance
      .getEntriesByType('resource')
      .map((e) => new URL(e.name).pathname)
      .filter((p) => /^\/ui\/assets\/terminal-[^/]+\.(js|css)$/.test(p)),
  );
  check(paths.some((p) => p.endsWith('.js')), `no terminal chunk was loaded: ${paths}`);
  const cookie = (await page.context().cookies()).find((c) => c.name === 'hearth_session');
  const sizes = [];
  for (const path of [...new Set(paths)].sort()) {
    const r = await fetch(new URL(path, page.url()), {
      headers: { 'Accept-Encoding': 'gzip', Cookie: `hearth_session=${cookie.value}` },
    });
    check(r.status === 200 && r.headers.get('content-encoding') === 'gzip', `${path}: ${r.status}, ${r.headers.get('content-encoding')}`);
    sizes.push(`${path.split('/').pop().replace(/-[^-.]+\./, '.')} ${r.headers.get('content-length')} bytes gzipped`);
  }
  return sizes.join(', ');
}

/** What the terminal shows: xterm's rows, as text. */
async function screen(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('.terminal .xterm-rows > div')].map((r) => r.textContent.replace(/\u00a0/g, ' ')).join('\n'),
  );
}

/** Waits until the terminal's rows match `pattern` (a RegExp's source). */
async function shows(page, pattern, what) {
  try {
    await page.waitForFunction(
      (source) => {
        const rows = [...document.querySelectorAll('.terminal .xterm-rows > div')].map((r) => r.textContent.replace(/\u00a0/g, ' '));
        return new RegExp(source, 'm').test(rows.join('\n'));
      },
      pattern,
      { timeout: WAIT_MS * 2, polling: 100 },
    );
  } catch (error) {
    throw new Error(`the terminal did not show ${what} (/${pattern}/); it shows:\n${await screen(page)}\n${error.message}`);
  }
}

async function size(page) {
  const section = page.locator('section.terminal');
  return { rows: Number(await section.getAttribute('data-rows')), cols: Number(await section.getAttribute('data-cols')) };
}

/** A terminal into the machine: opened by keyboard, `uname -a`, `stty size`
 * before and after the window narrows, `exit`, and Close. */
async function terminal(page) {
  const machine = (await api(page, 'GET', `/v1/machines/${MACHINE}`)).json;
  check(machine.kernel, `the machine has no kernel release: ${JSON.stringify(machine)}`);
  const opened = Date.now();
  await page.getByRole('button', { name: 'Terminal', exact: true }).focus();
  await page.keyboard.press('Enter');
  await page.locator('[data-terminal-state="open"]').waitFor({ timeout: WAIT_MS });
  check(
    await page.evaluate(() => document.activeElement?.classList.contains('xterm-helper-textarea')),
    'the keyboard is not in the terminal once it opened',
  );
  check(
    (await page.locator('.xterm-helper-textarea').getAttribute('aria-label')) ===
      `Terminal of ${MACHINE}: type commands here. Ctrl+] leaves the terminal`,
    "the terminal's input has no label saying how to leave it",
  );
  // xterm takes Tab and Escape: Ctrl+] is the keyboard's way out, to Close.
  await page.keyboard.press('Control+BracketRight');
  check(
    (await page.evaluate(() => document.activeElement?.textContent)) === 'Close the terminal',
    'Ctrl+] in the terminal does not move the keyboard to its Close button',
  );
  check(
    (await page.locator('[data-terminal-hint]').innerText()).includes('Ctrl+] leaves the terminal'),
    'no hint next to the terminal says how to leave it',
  );
  await page.locator('.xterm-helper-textarea').focus();
  step('Ctrl+] leaves the terminal for its Close button, as its label and hint say');
  await page.keyboard.type('uname -a');
  await page.keyboard.press('Enter');
  const kernel = machine.kernel.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  await shows(page, `^Linux \\S+ ${kernel} `, `uname -a's line with the kernel ${machine.kernel}`);
  const readyMs = Date.now() - opened;
  // The tty has the size the page asked for, and follows the window's.
  const wide = await size(page);
  check(wide.rows > 5 && wide.cols > 40, `the terminal is ${wide.cols}×${wide.rows}`);
  await page.keyboard.type('stty size');
  await page.keyboard.press('Enter');
  await shows(page, `^${wide.rows} ${wide.cols}\\s*$`, `stty size saying ${wide.rows} ${wide.cols}`);
  await page.screenshot({ path: `${SHOTS}/machine-terminal-uname-1280-light.png` });
  step(`a terminal opened by keyboard runs uname -a (kernel ${machine.kernel}) ${readyMs} ms after Enter; its tty is ${wide.cols}×${wide.rows}`);
  // xterm's own styles, which it writes into <style> elements that the
  // Content-Security-Policy refuses, are applied as constructed sheets.
  const display = await page.evaluate(() => {
    const span = document.querySelector('.terminal .xterm-rows span');
    return span ? getComputedStyle(span).display : 'no span';
  });
  check(display === 'inline-block', `xterm's cell style is not applied (a row's span is ${display})`);
  step(`the terminal loaded on demand: ${await chunkBytes(page)}`);

  await page.setViewportSize({ width: 390, height: 860 });
  await page.waitForFunction((cols) => Number(document.querySelector('section.terminal')?.dataset.cols) < cols, wide.cols, {
    timeout: WAIT_MS,
  });
  const narrow = await size(page);
  await page.keyboard.type('clear; stty size');
  await page.keyboard.press('Enter');
  await shows(page, `^${narrow.rows} ${narrow.cols}\\s*$`, `stty size saying ${narrow.rows} ${narrow.cols}`);
  await page.setViewportSize({ width: 1280, height: 860 });
  step(`at 390 px the tty was resized to ${narrow.cols}×${narrow.rows}, as stty size says`);
  await audit(page, 'machine-terminal');

  await page.locator('.xterm-helper-textarea').focus();
  await page.keyboard.type('exit 3');
  await page.keyboard.press('Enter');
  await page.locator('[data-terminal-state="ended"]').waitFor({ timeout: WAIT_MS });
  const end = await page.locator('[data-terminal-end]').innerText();
  check(end.includes('exited with code 3'), `the end line says: ${end}`);
  await shows(page, '\\[exited with code 3\\]', 'the end line');
  step(`exit 3 ends the session: "${end}"`);

  // Close frees it and gives the keyboard back to the button that opens one.
  await page.getByRole('button', { name: 'Close the terminal' }).click();
  await page.locator('[data-terminal-state="closed"]').waitFor({ timeout: WAIT_MS });
  // The focus moves in an effect, after the closed state is drawn.
  const refocused = await page
    .waitForFunction(() => document.activeElement?.textContent === 'Terminal', null, { timeout: WAIT_MS })
    .then(() => true, () => false);
  check(refocused, 'after Close, the keyboard is not on the Terminal button');
  // Closed while it loads, then opened again: one terminal, one session.
  await page.getByRole('button', { name: 'Terminal', exact: true }).click();
  await page.getByRole('button', { name: 'Close the terminal' }).click();
  await page.getByRole('button', { name: 'Terminal', exact: true }).click();
  await page.locator('[data-terminal-state="open"]').waitFor({ timeout: WAIT_MS });
  const drawn = await page.locator('.terminal .xterm').count();
  check(drawn === 1, `opened, closed and opened again, the page has ${drawn} terminals`);
  // Close also ends a session that is still running, with what it started.
  await page.locator('.xterm-helper-textarea').focus();
  await page.keyboard.type('sleep 777 & sleep 778');
  await page.keyboard.press('Enter');
  const sleeping = () => sleeps(page);
  await until(async () => (await sleeping()).length === 2, 'the terminal started sleep 777 and sleep 778');
  await page.getByRole('button', { name: 'Close the terminal' }).click();
  await page.locator('[data-terminal-state="closed"]').waitFor({ timeout: WAIT_MS });
  check(!(await page.locator('.terminal .xterm').count()), 'the closed terminal is still on the page');
  await until(async () => (await sleeping()).length === 0, 'Close ends the shell and its background job');
  step('Close ends a session, its processes (a background job too) and removes the terminal');
}

/** The commands running `sleep 777` or `sleep 778` in the machine, read
 * from /proc through an exec session opened from the page. */
async function sleeps(page) {
  const listed = await execOutput(page, `for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < "$f"; echo; done 2>/dev/null`);
  return listed
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l === 'sleep 777' || l === 'sleep 778');
}

/** Waits until `condition()` holds, asking again every 250 ms. */
async function until(condition, what) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    if (await condition()) return;
    check(Date.now() < deadline, `not within ${WAIT_MS} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

/** Runs `sh -c script` in MACHINE on the exec WebSocket, from the page (its
 * cookie and Origin, as the terminal does): its stdout, once it exits. */
async function execOutput(page, script) {
  return page.evaluate(
    ({ name, script }) =>
      new Promise((resolve, reject) => {
        const socket = new WebSocket(`ws://${location.host}/v1/machines/${encodeURIComponent(name)}/exec`);
        socket.binaryType = 'arraybuffer';
        const out = [];
        socket.onopen = () => socket.send(JSON.stringify({ argv: ['sh', '-c', script] }));
        socket.onmessage = (event) => {
          if (typeof event.data === 'string') {
            resolve(out.join(''));
            socket.close();
            return;
          }
          const bytes = new Uint8Array(event.data);
          if (bytes[0] === 1) out.push(new TextDecoder().decode(bytes.subarray(1)));
        };
        socket.onclose = () => reject(new Error(`the exec session of ${script} ended without its end`));
      }),
    { name: MACHINE, script },
  );
}

/** A snapshot taken from the page (the machine stops), restored as a
 * second machine, which is removed; then the snapshot is deleted. */
async function snapshot(page) {
  await page.getByRole('button', { name: 'Snapshot', exact: true }).click();
  const input = page.getByLabel('Snapshot name');
  const name = await input.inputValue();
  check(new RegExp(`^${MACHINE}-\\d{8}-\\d{6}$`).test(name), `the default snapshot name is ${name}`);
  const taken = Date.now();
  await page.getByRole('button', { name: 'Save the snapshot' }).click();
  await page.locator(`[data-snapshot-taken="${name}"]`).waitFor({ timeout: MACHINE_MS });
  const takeMs = Date.now() - taken;
  await page.locator(`#snapshots tr[data-snapshot="${name}"]`).waitFor({ timeout: WAIT_MS });
  await state(page, 'stopped');
  check(!(await page.getByRole('button', { name: 'Snapshot', exact: true }).isEnabled()), 'Snapshot is offered for a stopped machine');
  step(`Snapshot saved ${name} in ${takeMs} ms; it is listed and the machine stopped`);
  await audit(page, 'machine-snapshots');

  const copy = `${MACHINE}2`;
  await page.getByRole('button', { name: `Restore as… (${name})` }).click();
  await page.getByLabel('New machine’s name').fill(copy);
  const restoring = Date.now();
  await page.getByRole('button', { name: 'Restore', exact: true }).click();
  await page.locator(`[data-snapshot-restored="${copy}"]`).waitFor({ timeout: MACHINE_MS });
  const restoreMs = Date.now() - restoring;
  await page.getByRole('link', { name: `machine ${copy}` }).click();
  await heading(page, `Machine ${copy}`);
  await state(page, 'running');
  step(`Restore as ${copy} resumed it in ${restoreMs} ms; its page shows it running`);
  page.once('dialog', (dialog) => dialog.accept());
  await page.getByRole('button', { name: 'Remove', exact: true }).click();
  await heading(page, 'Machines');
  await page.locator(`table#machines tr[data-machine="${copy}"]`).waitFor({ state: 'detached', timeout: MACHINE_MS });

  await page.locator(`table#machines tr[data-machine="${MACHINE}"] th a`).click();
  await heading(page, `Machine ${MACHINE}`);
  page.once('dialog', (dialog) => dialog.accept());
  await page.getByRole('button', { name: `Delete ${name}` }).click();
  await page.locator(`#snapshots tr[data-snapshot="${name}"]`).waitFor({ state: 'detached', timeout: WAIT_MS });
  const left = (await api(page, 'GET', '/v1/snapshots')).json.snapshots;
  check(!left.some((s) => s.name === name), `${name} is still listed by the API`);
  step(`${copy} removed from its page; Delete removed the snapshot`);
}
