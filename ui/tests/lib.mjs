// What every part of the browser test shares: its settings from the
// environment, checks, API calls made from the page, the axe-core audit
// and deadlines. browser.mjs is the run itself.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
/** The deadline of any one wait for the page. */
export const WAIT_MS = 10_000;
const WIDTHS = [1280, 390];
const SCHEMES = ['light', 'dark'];
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

function need(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`browser.mjs: ${name} is not set; run it through \`cargo test -p hearth --test it -- ui::\``);
    process.exit(2);
  }
  return value;
}

export const BASE = need('HEARTH_UI_BASE');
export const LINK = need('HEARTH_UI_LINK');
export const SHOTS = need('HEARTH_UI_SCREENSHOTS');
/** examples/apps/hello's component, which the apps part deploys by upload. */
export const HELLO_WASM = need('HEARTH_UI_HELLO_WASM');
/** The workflow examples/workflows/approval, deployed by the Rust test. */
export const APPROVAL = need('HEARTH_UI_APPROVAL');
/** A running machine, booted by the Rust test. */
export const MACHINE = need('HEARTH_UI_MACHINE');
/** A network made by the Rust test, and its two machines (`a b`). */
export const NETWORK = need('HEARTH_UI_NETWORK');
export const NET_MACHINES = need('HEARTH_UI_NET_MACHINES').split(' ');

export function check(condition, message) {
  if (!condition) throw new Error(message);
}

export function step(message) {
  console.log(`ok: ${message}`);
}

/** Runs axe-core on the page as it is, at each width and color scheme,
 * and fails on any serious or critical violation. The script is
 * evaluated rather than added as a script tag, which the dashboard's
 * Content-Security-Policy (rightly) refuses. */
export async function audit(page, name) {
  if (!(await page.evaluate(() => 'axe' in window))) await page.evaluate(axeSource);
  for (const scheme of SCHEMES) {
    await page.emulateMedia({ colorScheme: scheme });
    for (const width of WIDTHS) {
      await page.setViewportSize({ width, height: 860 });
      const result = await page.evaluate(async () => {
        // eslint-disable-next-line no-undef
        const r = await axe.run(document, { resultTypes: ['violations'] });
        return r.violations.map((v) => ({
          id: v.id,
          impact: v.impact,
          help: v.help,
          nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' ')),
        }));
      });
      const bad = result.filter((v) => v.impact === 'serious' || v.impact === 'critical');
      check(
        bad.length === 0,
        `axe found ${bad.length} serious or critical violations on ${name} at ${width} px, ${scheme}:\n` +
          JSON.stringify(bad, null, 2),
      );
      await page.screenshot({ path: `${SHOTS}/${name}-${width}-${scheme}.png`, fullPage: true });
    }
  }
  await page.emulateMedia({ colorScheme: 'light' });
  await page.setViewportSize({ width: 1280, height: 860 });
  step(`axe: no serious or critical violations on ${name} at ${WIDTHS.join(' and ')} px, light and dark`);
}

export async function api(page, method, path, { body, csrf, headers = {} } = {}) {
  return page.evaluate(
    async ({ method, path, body, csrf, headers }) => {
      const h = { ...headers };
      if (csrf) h['X-CSRF-Token'] = csrf;
      if (body !== undefined) h['Content-Type'] = 'application/json';
      const r = await fetch(path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
      const text = await r.text();
      let json = null;
      try {
        json = JSON.parse(text);
      } catch {}
      return { status: r.status, json, text };
    },
    { method, path, body, csrf, headers },
  );
}

export async function heading(page, text) {
  await page.getByRole('heading', { level: 1, name: text }).waitFor({ timeout: WAIT_MS });
}

/** Waits for a promise, or fails after WAIT_MS saying what it waited for. */
export async function withDeadline(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), WAIT_MS);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
