// Config: each layer's entries (a secret is a mask: the API never sends
// its value, and neither does this page), a form to set or change a plain
// entry, removing one, the history of changes with a rollback of a key
// to any version, and the diff between two versions. Follows `config/` on
// the live stream.

import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, api, seg } from '../api';
import { useAction, useLive, useResource, useTitle } from '../hooks';
import {
  CONFIG_PREFIX,
  MASK,
  configText,
  type ConfigChange,
  type ConfigDiff,
  type ConfigEntry,
  type ConfigHistoryEntry,
} from '../ops';
import { ErrorNote, LiveBadge, ago, clock } from './common';
import './ops.css';

/** History entries read. */
const HISTORY_LIMIT = 50;

/** The layers in the order consumers merge them, later winning. */
function layerOrder(layer: string): number {
  if (layer === 'files') return 0;
  if (layer.startsWith('hearth.toml')) return 1;
  if (layer === 'global') return 2;
  if (layer === 'override') return 4;
  return 3;
}

const LAYER_TEXT: Record<string, string> = {
  files: 'what `hearth config import` read',
  global: 'every consumer',
  override: 'wins over every other layer',
};

function layerText(layer: string): string {
  return LAYER_TEXT[layer] ?? `the scope ${layer}`;
}

/** A value as a person would type it again (TOML): strings as they are. */
function editable(entry: ConfigEntry): string {
  return typeof entry.value === 'string' ? entry.value : JSON.stringify(entry.value);
}

function Value({ value, secret }: { value: ConfigEntry['value'] | undefined; secret: boolean }) {
  if (secret) {
    return (
      <span class="secret" aria-label="secret, hidden" data-secret>
        {MASK} <span class="tag tag-secret">secret</span>
      </span>
    );
  }
  return <span class="mono">{configText(value, false)}</span>;
}

interface Draft {
  layer: string;
  key: string;
  text: string;
}

function SetForm({ draft, onDone }: { draft: Draft & { seq: number }; onDone: () => void }) {
  const [layer, setLayer] = useState(draft.layer);
  const [key, setKey] = useState(draft.key);
  const [text, setText] = useState(draft.text);
  const { busy, error, run, clear } = useAction();
  const [done, setDone] = useState<string | null>(null);
  const valueInput = useRef<HTMLTextAreaElement>(null);
  // An entry's Edit button fills the form in, and moves focus to its value.
  useEffect(() => {
    if (draft.seq === 0) return;
    setLayer(draft.layer);
    setKey(draft.key);
    setText(draft.text);
    setDone(null);
    clear();
    valueInput.current?.focus();
  }, [draft.seq]);
  const submit = (event: Event) => {
    event.preventDefault();
    setDone(null);
    void run(async () => {
      if (!key.trim()) throw new ApiError(0, 'invalid', 'The entry needs a key.', 'A dotted key, e.g. shop.greeting.');
      const written = await api<{ revision: number }>(
        'PUT',
        `/v1/config/entries/${seg(key.trim())}?layer=${seg(layer.trim() || 'global')}`,
        { text },
      );
      setDone(`Set ${key.trim()} in ${layer.trim() || 'global'} at revision ${written.revision}.`);
      onDone();
    });
  };
  return (
    <form class="config-form" aria-label="Set an entry" onSubmit={submit}>
      <label class="field">
        Layer
        <input
          type="text"
          name="layer"
          value={layer}
          list="config-layers"
          autocomplete="off"
          spellcheck={false}
          onInput={(e) => setLayer((e.target as HTMLInputElement).value)}
        />
      </label>
      <datalist id="config-layers">
        <option value="global" />
        <option value="override" />
      </datalist>
      <label class="field">
        Key
        <input
          type="text"
          name="key"
          value={key}
          placeholder="e.g. shop.greeting"
          autocomplete="off"
          spellcheck={false}
          onInput={(e) => setKey((e.target as HTMLInputElement).value)}
        />
      </label>
      <label class="field">
        <span>
          Value (TOML: <code>5</code>, <code>"text"</code>, <code>{'{ a = 1 }'}</code>; one bare word is a string)
        </span>
        <textarea
          ref={valueInput}
          name="value"
          rows={2}
          value={text}
          spellcheck={false}
          onInput={(e) => setText((e.target as HTMLTextAreaElement).value)}
        />
      </label>
      <p class="hint">
        Secrets are set from the CLI (<code>hearth config set KEY --secret</code>): typed at a prompt, never shown
        here.
      </p>
      <div>
        <button type="submit" disabled={busy}>
          {busy ? 'Setting…' : 'Set entry'}
        </button>
      </div>
      <ErrorNote error={error} />
      {done ? (
        <p class="note" role="status">
          {done}
        </p>
      ) : null}
    </form>
  );
}

function Layer({
  layer,
  entries,
  onEdit,
  reload,
}: {
  layer: string;
  entries: ConfigEntry[];
  onEdit: (entry: ConfigEntry) => void;
  reload: () => void;
}) {
  const action = useAction();
  const busy = action.running;
  const remove = (entry: ConfigEntry) =>
    action.run(
      async () => {
        try {
          await api('DELETE', `/v1/config/entries/${seg(entry.key)}?layer=${seg(entry.layer)}`);
        } finally {
          reload();
        }
      },
      { confirm: `Remove ${entry.key} from ${entry.layer}? Its consumers no longer see it from this layer.`, what: entry.key },
    );
  return (
    <div class="layer" data-layer={layer}>
      <h3>
        <span class="mono">{layer}</span> <span class="reason">{layerText(layer)}</span>
      </h3>
      <ErrorNote error={action.error} />
      <div class="scroll" role="region" aria-label={`Layer ${layer}`} tabIndex={0}>
        <table class="config-entries">
          <caption>The entries of {layer}, as set</caption>
          <thead>
            <tr>
              <th scope="col">Key</th>
              <th scope="col">Value</th>
              <th scope="col">Revision</th>
              <th scope="col">Actions</th>
            </tr>
          </thead>
          <tbody>
            {entries.map((e) => (
              <tr key={e.key} data-key={e.key}>
                <th scope="row" class="mono">
                  {e.key}
                  {e.source ? <div class="reason">from {e.source}</div> : null}
                </th>
                <td class="value">
                  <Value value={e.value} secret={e.secret} />
                </td>
                <td class="num">{e.revision}</td>
                <td class="actions">
                  {e.secret ? null : (
                    <button type="button" onClick={() => onEdit(e)} aria-label={`Edit ${e.key} in ${layer}`}>
                      Edit
                    </button>
                  )}
                  <button
                    type="button"
                    class="danger"
                    disabled={busy !== null}
                    onClick={() => remove(e)}
                    aria-label={`Remove ${e.key} from ${layer}`}
                  >
                    {busy === e.key ? 'Removing…' : 'Remove'}
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </div>
  );
}

function ChangeLine({ change }: { change: ConfigChange }) {
  const where = change.kind === 'schema' ? `schema ${change.key || '(root)'}` : `${change.layer ?? ''} ${change.key}`;
  const added = change.before === undefined && change.after !== undefined;
  const removed = change.after === undefined && change.before !== undefined;
  const kind = added ? 'added' : removed ? 'removed' : 'changed';
  return (
    <li class={`diff-line diff-${kind}`} data-change={kind} data-key={change.key}>
      <span class="diff-mark" aria-hidden="true">
        {added ? '+' : removed ? '−' : '~'}
      </span>
      <span class="visually-hidden">{kind}: </span>
      <span class="mono">{where}</span>
      {added ? (
        <>
          {' = '}
          <Value value={change.after} secret={change.secret} />
        </>
      ) : removed ? (
        <>
          {' was '}
          <Value value={change.before} secret={change.secret} />
        </>
      ) : (
        <>
          {': '}
          <Value value={change.before} secret={change.secret} />
          {' → '}
          <Value value={change.after} secret={change.secret} />
        </>
      )}
    </li>
  );
}

/** `layer key` of a value change, to tell its newest change from older ones. */
const where = (c: ConfigChange) => `${c.layer ?? ''} ${c.key}`;

function History({ entries, reload }: { entries: ConfigHistoryEntry[]; reload: () => void }) {
  // A key's newest change is what it has now: only older ones are offered
  // as a rollback. Entries are newest first.
  const newest = new Set<string>();
  const older = new Map<number, ConfigChange[]>();
  for (const e of entries) {
    const values = e.changes.filter((c) => c.kind === 'value');
    older.set(
      e.revision,
      values.filter((c) => newest.has(where(c)) && c.after !== undefined),
    );
    for (const c of values) newest.add(where(c));
  }
  const action = useAction();
  const [done, setDone] = useState<string | null>(null);
  const rollback = async (change: ConfigChange, revision: number) => {
    const layer = change.layer ?? 'global';
    await action.run(
      async () => {
        setDone(null);
        try {
          const written = await api<{ revision: number }>('POST', '/v1/config/rollback', {
            key: change.key,
            layer,
            to: revision,
          });
          setDone(`${change.key} is back to its value at revision ${revision} (revision ${written.revision}).`);
        } finally {
          reload();
        }
      },
      { confirm: `Set ${change.key} in ${layer} back to its value at revision ${revision}? This is a new change.` },
    );
  };
  return (
    <>
      <ErrorNote error={action.error} />
      {done ? (
        <p class="note" role="status">
          {done}
        </p>
      ) : null}
      <div class="scroll" role="region" aria-label="History of changes" tabIndex={0}>
        <table id="config-history">
          <caption>Committed changes, newest first</caption>
          <thead>
            <tr>
              <th scope="col">Revision</th>
              <th scope="col">When</th>
              <th scope="col">What changed</th>
              <th scope="col">Actions</th>
            </tr>
          </thead>
          <tbody>
            {entries.map((e) => (
              <tr key={e.revision} data-revision={e.revision}>
                <th scope="row" class="num">
                  {e.revision}
                </th>
                <td title={new Date(e.at_ms).toLocaleString()}>
                  {clock(e.at_ms)} <span class="reason">{ago(e.at_ms)}</span>
                </td>
                <td>
                  <ul class="diff">
                    {e.changes.map((c, i) => (
                      <ChangeLine key={i} change={c} />
                    ))}
                  </ul>
                </td>
                <td class="actions">
                  {(older.get(e.revision) ?? [])
                    .slice(0, 3)
                    .map((c) => (
                      <button
                        key={`${c.layer}:${c.key}`}
                        type="button"
                        disabled={action.busy}
                        onClick={() => rollback(c, e.revision)}
                        aria-label={`Roll back ${c.key} to r${e.revision} in ${c.layer ?? 'global'}`}
                      >
                        Roll back {c.key} to r{e.revision}
                      </button>
                    ))}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
        {entries.length === 0 ? <p class="empty">No change yet.</p> : null}
      </div>
    </>
  );
}

function Diff({ revisions }: { revisions: number[] }) {
  const newest = revisions[0];
  const [from, setFrom] = useState<string>(revisions[1] !== undefined ? String(revisions[1]) : '');
  const [to, setTo] = useState<string>(newest !== undefined ? String(newest) : '');
  // The history grows under the form: a choice still listed is kept, one
  // that is not (or none yet) falls back to the newest and the one before.
  const listed = revisions.join(',');
  useEffect(() => {
    const has = (r: string) => revisions.some((n) => String(n) === r);
    const fallbackFrom = revisions[1] ?? revisions[0];
    setFrom((old) => (has(old) ? old : fallbackFrom !== undefined ? String(fallbackFrom) : ''));
    setTo((old) => (has(old) ? old : revisions[0] !== undefined ? String(revisions[0]) : ''));
  }, [listed]);
  const [diff, setDiff] = useState<ConfigDiff | null>(null);
  const { busy, error, run } = useAction();
  const show = (event: Event) => {
    event.preventDefault();
    void run(async () => {
      const query = `from=${seg(from)}${to ? `&to=${seg(to)}` : ''}`;
      try {
        setDiff(await api<ConfigDiff>('GET', `/v1/config/diff?${query}`));
      } catch (failure) {
        setDiff(null);
        throw failure;
      }
    });
  };
  const options = (
    <>
      {revisions.map((r) => (
        <option key={r} value={String(r)}>
          revision {r}
        </option>
      ))}
    </>
  );
  return (
    <>
      <form class="inline-form" aria-label="Compare two versions" onSubmit={show}>
        <label class="field">
          From
          <select name="from" value={from} onChange={(e) => setFrom((e.target as HTMLSelectElement).value)}>
            {options}
          </select>
        </label>
        <label class="field">
          To
          <select name="to" value={to} onChange={(e) => setTo((e.target as HTMLSelectElement).value)}>
            {options}
          </select>
        </label>
        <button type="submit" disabled={busy || !from}>
          {busy ? 'Comparing…' : 'Show the diff'}
        </button>
      </form>
      <ErrorNote error={error} />
      {diff ? (
        <div class="diff-box" id="config-diff" data-from={diff.from} data-to={diff.to}>
          <p>
            From revision {diff.from} to {diff.to}: {diff.changes.length} change{diff.changes.length === 1 ? '' : 's'}
          </p>
          {diff.changes.length ? (
            <ul class="diff">
              {diff.changes.map((c, i) => (
                <ChangeLine key={i} change={c} />
              ))}
            </ul>
          ) : (
            <p class="empty">The two versions are the same.</p>
          )}
        </div>
      ) : null}
    </>
  );
}

interface ConfigView {
  scope: string;
  revision: number;
  keys: { key: string; value: ConfigEntry['value']; layer: string; source?: string; secret: boolean }[];
}

/** What one consumer sees: its layers merged, and where each key came from. */
function Merged({ scopes }: { scopes: string[] }) {
  const [scope, setScope] = useState('global');
  const view = useResource<ConfigView>(`/v1/config?scope=${seg(scope)}`, [CONFIG_PREFIX]).data;
  return (
    <>
      <form class="inline-form" aria-label="Choose a scope" onSubmit={(e) => e.preventDefault()}>
        <label class="field">
          Scope
          <select name="scope" value={scope} onChange={(e) => setScope((e.target as HTMLSelectElement).value)}>
            {scopes.map((s) => (
              <option key={s} value={s}>
                {s}
              </option>
            ))}
          </select>
        </label>
      </form>
      {view === null ? (
        <p aria-busy="true">Reading the merged config…</p>
      ) : (
        <div class="scroll" role="region" aria-label={`Merged config of ${scope}`} tabIndex={0}>
          <table id="config-merged" data-scope={view.scope}>
            <caption>What {view.scope} sees, and the layer each key comes from</caption>
            <thead>
              <tr>
                <th scope="col">Key</th>
                <th scope="col">Value</th>
                <th scope="col">From</th>
              </tr>
            </thead>
            <tbody>
              {view.keys.map((k) => (
                <tr key={k.key} data-key={k.key}>
                  <th scope="row" class="mono">
                    {k.key}
                  </th>
                  <td class="value">
                    <Value value={k.value} secret={k.secret} />
                  </td>
                  <td>
                    <span class="mono">{k.layer}</span>
                    {k.source ? <div class="reason">{k.source}</div> : null}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
          {view.keys.length === 0 ? <p class="empty">{view.scope} sees nothing.</p> : null}
        </div>
      )}
    </>
  );
}

export function Config() {
  useTitle('Config');
  const live = useLive();
  const { data, reload } = useResource<{ entries: ConfigEntry[] }>('/v1/config/entries', [CONFIG_PREFIX]);
  const history = useResource<{ entries: ConfigHistoryEntry[] }>(
    `/v1/config/history?limit=${HISTORY_LIMIT}`,
    [CONFIG_PREFIX],
  );
  const [draft, setDraft] = useState<Draft & { seq: number }>({ layer: 'global', key: '', text: '', seq: 0 });
  const layers = new Map<string, ConfigEntry[]>();
  for (const e of data?.entries ?? []) {
    const list = layers.get(e.layer) ?? [];
    list.push(e);
    layers.set(e.layer, list);
  }
  const ordered = [...layers.keys()].sort((a, b) => layerOrder(a) - layerOrder(b) || a.localeCompare(b));
  const revisions = (history.data?.entries ?? []).map((e) => e.revision);
  return (
    <section aria-labelledby="config-title">
      <div class="heading">
        <h1 id="config-title" tabIndex={-1}>
          Config
        </h1>
        <LiveBadge connection={live.connection} />
      </div>
      <p class="lead">
        Consumers see their layers merged: <span class="mono">files</span>, an app's own{' '}
        <span class="mono">hearth.toml</span>, <span class="mono">global</span>, their scope (
        <span class="mono">app:NAME</span>, <span class="mono">service:NAME</span>…), then{' '}
        <span class="mono">override</span>, the later winning.
      </p>

      <h2>Layers</h2>
      {data === null ? (
        <p aria-busy="true">Reading the config…</p>
      ) : ordered.length === 0 ? (
        <p class="empty">Nothing is set. Set an entry below, or run <code>hearth config import DIR</code>.</p>
      ) : (
        ordered.map((layer) => (
          <Layer
            key={layer}
            layer={layer}
            entries={layers.get(layer) ?? []}
            reload={reload}
            onEdit={(e) => setDraft((d) => ({ layer: e.layer, key: e.key, text: editable(e), seq: d.seq + 1 }))}
          />
        ))
      )}

      <h2>What a consumer sees</h2>
      <Merged scopes={['global', ...ordered.filter((l) => l.includes(':'))]} />

      <h2>Set an entry</h2>
      <SetForm draft={draft} onDone={reload} />

      <h2>History</h2>
      {history.data === null ? (
        <p aria-busy="true">Reading the history…</p>
      ) : (
        <History entries={history.data.entries} reload={history.reload} />
      )}

      <h2>Compare two versions</h2>
      {revisions.length === 0 ? (
        <p class="empty">There is no version to compare yet.</p>
      ) : (
        <Diff revisions={revisions} />
      )}
    </section>
  );
}
