// Alerts, as Alertmanager's UI shows them: what fires now, grouped by
// rule, with its labels, since when and its summary, each silenced from
// here for a while with a comment; the silences, active and ended, each
// ended from here; the rules in force (what each watches and whom it
// tells); and the history of notifications. Follows `alerts/` on the
// live stream.

import { useState } from 'preact/hooks';
import { ApiError, api, seg } from '../api';
import { useAction, useLive, useResource, useTitle } from '../hooks';
import {
  ALERTS_PREFIX,
  historyText,
  isActive,
  silencesOf,
  type AlertHistoryEntry,
  type AlertInfo,
  type AlertList,
  type AlertRules,
  type Silence,
} from '../ops';
import { ErrorNote, LiveBadge, ago, clock, duration } from './common';
import './ops.css';

const HISTORY_LIMIT = 50;

function Labels({ labels, skip = [] }: { labels: Record<string, string>; skip?: string[] }) {
  const shown = Object.entries(labels).filter(([k]) => !skip.includes(k));
  if (!shown.length) return <>—</>;
  return (
    <ul class="labels">
      {shown.map(([k, v]) => (
        <li key={k} class="label mono">
          {k}={v}
        </li>
      ))}
    </ul>
  );
}

/** A matcher that meets exactly this value. */
function matcher(name: string, value: string): string {
  return /^[A-Za-z0-9_./:-]*$/.test(value) ? `${name}=${value}` : `${name}="${value.replace(/["\\]/g, '\\$&')}"`;
}

function SilenceForm({ alert, onDone }: { alert: AlertInfo; onDone: () => void }) {
  const [matchers, setMatchers] = useState(
    Object.entries(alert.labels)
      .map(([k, v]) => matcher(k, v))
      .join('\n'),
  );
  const [duration, setDuration] = useState('2h');
  const [comment, setComment] = useState('');
  const { busy, error, run } = useAction();
  const submit = (event: Event) => {
    event.preventDefault();
    void run(async () => {
      const list = matchers
        .split('\n')
        .map((m) => m.trim())
        .filter(Boolean);
      if (!list.length) throw new ApiError(0, 'invalid', 'A silence needs a matcher.', 'e.g. rule=disk-full, one a line.');
      if (!comment.trim()) throw new ApiError(0, 'invalid', 'Say why in the comment.', 'Whoever sees the silence reads it.');
      await api<Silence>('POST', '/v1/alerts/silences', {
        matchers: list,
        duration: duration.trim(),
        comment: comment.trim(),
        created_by: 'dashboard',
      });
      onDone();
    });
  };
  const id = `silence-${alert.fingerprint}`;
  return (
    <form class="silence-form" aria-label={`Silence ${alert.rule}`} onSubmit={submit}>
      <label class="field" for={`${id}-matchers`}>
        Matchers, one a line (<code>name=value</code>, <code>!=</code>, <code>=~</code>, <code>!~</code>)
      </label>
      <textarea
        id={`${id}-matchers`}
        name="matchers"
        rows={Math.min(6, Math.max(2, matchers.split('\n').length))}
        value={matchers}
        spellcheck={false}
        onInput={(e) => setMatchers((e.target as HTMLTextAreaElement).value)}
      />
      <div class="inline-form">
        <label class="field">
          For
          <input
            type="text"
            name="duration"
            value={duration}
            list="silence-durations"
            autocomplete="off"
            spellcheck={false}
            onInput={(e) => setDuration((e.target as HTMLInputElement).value)}
          />
        </label>
        <datalist id="silence-durations">
          <option value="30m" />
          <option value="2h" />
          <option value="1d" />
        </datalist>
        <label class="field">
          Comment
          <input
            type="text"
            name="comment"
            value={comment}
            placeholder="e.g. deploying a fix"
            onInput={(e) => setComment((e.target as HTMLInputElement).value)}
          />
        </label>
      </div>
      <div>
        <button type="submit" disabled={busy}>
          {busy ? 'Silencing…' : 'Create the silence'}
        </button>
        <button type="button" class="quiet" onClick={onDone}>
          Close
        </button>
      </div>
      <ErrorNote error={error} />
    </form>
  );
}

function AlertRow({ alert, silences, reload }: { alert: AlertInfo; silences: Silence[]; reload: () => void }) {
  const [open, setOpen] = useState(false);
  const by = silencesOf(alert.labels, silences);
  const since = alert.active_since ?? alert.starts_at;
  const source = alert.labels.key ?? alert.labels.source ?? alert.labels.instance ?? null;
  return (
    <>
      <tr data-alert={alert.fingerprint} data-rule={alert.rule} data-phase={alert.phase} data-muted={String(alert.muted)}>
        <td>
          <span class={`tag tag-alert-${alert.phase}`}>{alert.phase}</span>
          {alert.muted ? (
            <div>
              <span class="tag tag-silenced">{by.length ? 'silenced' : 'muted'}</span>
            </div>
          ) : null}
        </td>
        <td>
          <div class="summary">{alert.annotations.summary ?? '—'}</div>
          {source ? <div class="reason mono">{source}</div> : null}
        </td>
        <td>
          <Labels labels={alert.labels} skip={['rule']} />
        </td>
        <td>
          {since ? (
            <span title={new Date(since).toLocaleString()}>
              {ago(since)} <span class="reason">{clock(since)}</span>
            </span>
          ) : (
            '—'
          )}
        </td>
        <td class="actions">
          {alert.muted && by.length ? (
            <span class="reason">until {clock(Math.max(...by.map((s) => s.ends_at)))}</span>
          ) : (
            <button
              type="button"
              aria-expanded={open}
              onClick={() => setOpen(!open)}
              aria-label={`Silence ${alert.rule} ${source ?? ''}`.trim()}
            >
              Silence…
            </button>
          )}
        </td>
      </tr>
      {open ? (
        <tr class="form-row">
          <td colSpan={5}>
            <SilenceForm
              alert={alert}
              onDone={() => {
                setOpen(false);
                reload();
              }}
            />
          </td>
        </tr>
      ) : null}
    </>
  );
}

function Firing({ alerts, silences, reload }: { alerts: AlertInfo[]; silences: Silence[]; reload: () => void }) {
  const groups = new Map<string, AlertInfo[]>();
  for (const a of alerts) groups.set(a.rule, [...(groups.get(a.rule) ?? []), a]);
  if (!groups.size) return <p class="empty" id="no-firing">Nothing fires.</p>;
  return (
    <>
      {[...groups.entries()].map(([rule, list]) => (
        <div class="alert-group" key={rule} data-group={rule}>
          <h3>
            <span class="mono">{rule}</span>{' '}
            <span class="reason">
              {list.length} alert{list.length === 1 ? '' : 's'}
              {list.some((a) => a.muted) ? `, ${list.filter((a) => a.muted).length} silenced` : ''}
            </span>
          </h3>
          <div class="scroll" role="region" aria-label={`Alerts of ${rule}`} tabIndex={0}>
            <table class="alerts">
              <caption>The alerts of rule {rule}</caption>
              <thead>
                <tr>
                  <th scope="col">State</th>
                  <th scope="col">Summary and source</th>
                  <th scope="col">Labels</th>
                  <th scope="col">Since</th>
                  <th scope="col">Actions</th>
                </tr>
              </thead>
              <tbody>
                {list.map((a) => (
                  <AlertRow key={a.fingerprint} alert={a} silences={silences} reload={reload} />
                ))}
              </tbody>
            </table>
          </div>
        </div>
      ))}
    </>
  );
}

function Silences({ silences, reload }: { silences: Silence[]; reload: () => void }) {
  const action = useAction();
  const busy = action.running;
  const expire = (s: Silence) =>
    action.run(
      async () => {
        try {
          await api('DELETE', `/v1/alerts/silences/${seg(s.id)}`);
        } finally {
          reload();
        }
      },
      { confirm: `Expire silence ${s.id} now? The alerts it mutes are told again.`, what: s.id },
    );
  return (
    <>
      <ErrorNote error={action.error} />
      <div class="scroll" role="region" aria-label="Silences" tabIndex={0}>
        <table id="silences">
          <caption>Silences, active and ended in the last five days</caption>
          <thead>
            <tr>
              <th scope="col">Matchers</th>
              <th scope="col">State</th>
              <th scope="col">From</th>
              <th scope="col">Until</th>
              <th scope="col">By and why</th>
              <th scope="col">Actions</th>
            </tr>
          </thead>
          <tbody>
            {silences.map((s) => (
              <tr key={s.id} data-silence={s.id} data-active={String(s.active)}>
                <th scope="row">
                  <ul class="labels">
                    {s.matchers.map((m) => (
                      <li key={m} class="label mono">
                        {m}
                      </li>
                    ))}
                  </ul>
                  <div class="reason mono">{s.id}</div>
                </th>
                <td>
                  <span class={`tag ${s.active ? 'tag-silenced' : 'tag-expired'}`}>{s.active ? 'active' : 'expired'}</span>
                </td>
                <td title={new Date(s.starts_at).toLocaleString()}>{clock(s.starts_at)}</td>
                <td title={new Date(s.ends_at).toLocaleString()}>
                  {clock(s.ends_at)}{' '}
                  <span class="reason">
                    {s.ends_at > Date.now() ? `in ${duration(s.ends_at - Date.now())}` : ago(s.ends_at)}
                  </span>
                </td>
                <td>
                  {s.created_by}
                  {s.comment ? <div class="reason">{s.comment}</div> : null}
                </td>
                <td class="actions">
                  {s.active ? (
                    <button
                      type="button"
                      class="danger"
                      disabled={busy !== null}
                      onClick={() => expire(s)}
                      aria-label={`Expire silence ${s.id}`}
                    >
                      {busy === s.id ? 'Expiring…' : 'Expire'}
                    </button>
                  ) : (
                    '—'
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
        {silences.length === 0 ? <p class="empty">No silences.</p> : null}
      </div>
    </>
  );
}

/** What a rule watches, from the rules file's text: its `event`, `log` or
 * `metric` table, inline or as `[rule.event]`. `GET /v1/alerts/rules`
 * lists only the input's kind. */
export function watches(text: string, name: string): string | null {
  for (const block of text.split(/^(?=\[\[)/m)) {
    if (!block.startsWith('[[rule]]')) continue;
    const named = /^name\s*=\s*"((?:[^"\\]|\\.)*)"/m.exec(block);
    if (named?.[1] !== name) continue;
    const inline = /^(event|log|metric)\s*=\s*(\{.*\})\s*$/m.exec(block);
    if (inline) return `${inline[1]} ${inline[2]}`;
    const table = /^\[rule\.(event|log|metric)\]\s*\n((?:[^[\n].*\n?)*)/m.exec(block);
    if (table) {
      const fields = table[2]
        .split('\n')
        .map((l) => l.trim())
        .filter(Boolean);
      return `${table[1]} { ${fields.join(', ')} }`;
    }
  }
  return null;
}

function Rules({ rules }: { rules: AlertRules }) {
  const kinds = new Map(rules.receivers.map((r) => [r.name, r.kind]));
  const ordered = rules.rules.slice().sort((a, b) => Number(a.builtin) - Number(b.builtin) || a.name.localeCompare(b.name));
  return (
    <div class="scroll" role="region" aria-label="Rules" tabIndex={0}>
      <table id="alert-rules">
        <caption>The rules in force, yours first, then hearth's built-in ones</caption>
        <thead>
          <tr>
            <th scope="col">Rule</th>
            <th scope="col">Watches</th>
            <th scope="col">Tells</th>
            <th scope="col">Active</th>
          </tr>
        </thead>
        <tbody>
          {ordered.map((r) => (
            <tr key={r.name} data-rule={r.name}>
              <th scope="row" class="mono">
                {r.name}
                {r.builtin ? <div class="reason">built-in</div> : null}
              </th>
              <td class="mono value">
                {watches(r.builtin ? rules.builtin : rules.text, r.name) ??
                  watches(rules.builtin, r.name) ??
                  r.input}
              </td>
              <td>{r.notify.length ? r.notify.map((n) => `${n} (${kinds.get(n) ?? '?'})`).join(', ') : '—'}</td>
              <td class="num">{r.active}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {ordered.length === 0 ? <p class="empty">No rules.</p> : null}
    </div>
  );
}

function History({ entries }: { entries: AlertHistoryEntry[] }) {
  return (
    <div class="scroll" role="region" aria-label="Alert history" tabIndex={0}>
      <table id="alert-history">
        <caption>Notifications handed to their receivers, newest first</caption>
        <thead>
          <tr>
            <th scope="col">When</th>
            <th scope="col">Rule</th>
            <th scope="col">Status</th>
            <th scope="col">What</th>
            <th scope="col">Receiver</th>
          </tr>
        </thead>
        <tbody>
          {entries.map((e) => (
            <tr key={e.id} data-history={e.id} data-rule={e.rule}>
              <td class="num" title={new Date(e.at).toLocaleString()}>
                {clock(e.at)} <span class="reason">{ago(e.at)}</span>
              </td>
              <td class="mono">{e.rule}</td>
              <td>
                <span class={`tag tag-alert-${e.status}`}>{e.status}</span>
              </td>
              <td class="value">{historyText(e)}</td>
              <td>
                {e.receiver} <span class="reason">({e.kind})</span>
                {e.error ? <div class="reason">gave up: {e.error}</div> : null}
                {e.attempts > 1 ? <div class="reason">{e.attempts} attempts</div> : null}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {entries.length === 0 ? <p class="empty">Nothing was sent yet.</p> : null}
    </div>
  );
}

export function Alerts() {
  useTitle('Alerts');
  const live = useLive();
  const alerts = useResource<AlertList>('/v1/alerts', [ALERTS_PREFIX]);
  const silences = useResource<{ silences: Silence[] }>('/v1/alerts/silences', [ALERTS_PREFIX]);
  const rules = useResource<AlertRules>('/v1/alerts/rules', [ALERTS_PREFIX]).data;
  const history = useResource<{ entries: AlertHistoryEntry[] }>(
    `/v1/alerts/history?limit=${HISTORY_LIMIT}`,
    [ALERTS_PREFIX],
  ).data;
  const reload = () => {
    alerts.reload();
    silences.reload();
  };
  const list = alerts.data?.alerts ?? [];
  const active = list.filter(isActive);
  const resolved = list.filter((a) => a.phase === 'resolved');
  const firing = active.filter((a) => a.phase === 'firing');
  return (
    <section aria-labelledby="alerts-title">
      <div class="heading">
        <h1 id="alerts-title" tabIndex={-1}>
          Alerts
        </h1>
        <LiveBadge connection={live.connection} />
      </div>

      <h2>
        Firing <span class="count-badge" data-firing={firing.length}>{firing.length}</span>
      </h2>
      {alerts.data === null ? (
        <p aria-busy="true">Reading the alerts…</p>
      ) : (
        <>
          {alerts.data.undelivered ? (
            <p class="note">{alerts.data.undelivered} notification(s) are still being delivered.</p>
          ) : null}
          <Firing alerts={active} silences={silences.data?.silences ?? []} reload={reload} />
          {resolved.length ? (
            <details class="resolved">
              <summary>Recently resolved ({resolved.length})</summary>
              <ul>
                {resolved.map((a) => (
                  <li key={a.fingerprint}>
                    <span class="mono">{a.rule}</span> {a.annotations.summary ?? ''}{' '}
                    {a.ends_at ? <span class="reason">resolved {ago(a.ends_at)}</span> : null}
                  </li>
                ))}
              </ul>
            </details>
          ) : null}
        </>
      )}

      <h2>Silences</h2>
      {silences.data === null ? (
        <p aria-busy="true">Reading the silences…</p>
      ) : (
        <Silences silences={silences.data.silences} reload={reload} />
      )}

      <h2>Rules</h2>
      {rules === null ? <p aria-busy="true">Reading the rules…</p> : <Rules rules={rules} />}

      <h2>History</h2>
      {history === null ? <p aria-busy="true">Reading the history…</p> : <History entries={history.entries} />}
    </section>
  );
}
