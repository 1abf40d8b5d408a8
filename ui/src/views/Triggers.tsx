// An app's triggers: those of its active version's hearth.toml and those
// added through the API, listed live; a form adds one (cron, store event
// or webhook) and the API's own can be removed.

import { useState } from 'preact/hooks';
import { api, seg } from '../api';
import { useAction, useResource } from '../hooks';
import { ErrorNote, ago } from './common';

type Kind = 'cron' | 'event' | 'webhook';

interface Trigger {
  id: string;
  source: 'manifest' | 'api';
  kind: Kind;
  schedule?: string;
  timezone?: string;
  path?: string;
  body?: string;
  prefix?: string;
  kinds?: string[];
  signal?: string;
  signed: boolean;
  created_at: number;
}

/** What a trigger does, in one line. */
function what(t: Trigger): string {
  const to = t.path ? ` → POST ${t.path}` : '';
  switch (t.kind) {
    case 'cron':
      return `${t.schedule ?? '?'} (${t.timezone ?? 'UTC'})${to}`;
    case 'event':
      return `${(t.kinds ?? ['put', 'delete']).join(', ')} under ${t.prefix ?? ''}${to}`;
    case 'webhook':
      return `${t.path ?? '/'}${t.signed ? ', signed' : ''}`;
  }
}

function RemoveButton({ app, trigger, onDone }: { app: string; trigger: Trigger; onDone: () => void }) {
  const action = useAction();
  const remove = () =>
    action.run(
      async () => {
        await api('DELETE', `/v1/apps/${seg(app)}/triggers/${seg(trigger.id)}`);
        onDone();
      },
      { confirm: `Remove trigger ${trigger.id} of ${app}?` },
    );
  return (
    <>
      <button
        type="button"
        class="danger"
        onClick={remove}
        disabled={action.busy}
        aria-label={`Remove trigger ${trigger.id}`}
      >
        {action.busy ? 'Removing…' : 'Remove'}
      </button>
      <ErrorNote error={action.error} />
    </>
  );
}

function AddTrigger({ app, onAdded }: { app: string; onAdded: () => void }) {
  const [kind, setKind] = useState<Kind>('cron');
  const [schedule, setSchedule] = useState('');
  const [timezone, setTimezone] = useState('');
  const [prefix, setPrefix] = useState('');
  const [path, setPath] = useState('');
  const [secret, setSecret] = useState('');
  const { busy, error, run } = useAction();
  const add = (event: Event) => {
    event.preventDefault();
    const body: Record<string, string> = { kind };
    if (kind === 'cron') {
      body.schedule = schedule.trim();
      if (timezone.trim()) body.timezone = timezone.trim();
    }
    if (kind === 'event') body.prefix = prefix.trim();
    if (path.trim()) body.path = path.trim();
    if (kind === 'webhook' && secret) body.secret = secret;
    void run(async () => {
      await api('POST', `/v1/apps/${seg(app)}/triggers`, body);
      setSchedule('');
      setPrefix('');
      setPath('');
      setSecret('');
      onAdded();
    });
  };
  const input = (label: string, value: string, set: (v: string) => void, placeholder: string, type = 'text') => (
    <label class="field">
      {label}
      <input
        type={type}
        value={value}
        placeholder={placeholder}
        autocomplete="off"
        spellcheck={false}
        onInput={(e) => set((e.target as HTMLInputElement).value)}
      />
    </label>
  );
  return (
    <form class="add-trigger" aria-label={`Add a trigger to ${app}`} onSubmit={add}>
      <label class="field">
        Kind
        <select value={kind} onChange={(e) => setKind((e.target as HTMLSelectElement).value as Kind)}>
          <option value="cron">cron: on a schedule</option>
          <option value="event">event: on changes in the store</option>
          <option value="webhook">webhook: on a request, once per delivery</option>
        </select>
      </label>
      {kind === 'cron' ? input('Schedule', schedule, setSchedule, 'e.g. */5 * * * *') : null}
      {kind === 'cron' ? input('Time zone (optional)', timezone, setTimezone, 'UTC') : null}
      {kind === 'event' ? input('Key prefix', prefix, setPrefix, 'e.g. kv/orders/') : null}
      {input(kind === 'webhook' ? 'Path' : 'Path called (optional)', path, setPath, '/')}
      {kind === 'webhook' ? input('Secret (optional; then deliveries must be signed)', secret, setSecret, '', 'password') : null}
      <div>
        <button type="submit" disabled={busy}>
          {busy ? 'Adding…' : 'Add trigger'}
        </button>
      </div>
      <ErrorNote error={error} />
    </form>
  );
}

export function Triggers({ app }: { app: string }) {
  const { data, reload } = useResource<{ triggers: Trigger[] }>(`/v1/apps/${seg(app)}/triggers`, [
    `apps/triggers/${app}/`,
    `apps/records/${app}`,
  ]);
  const triggers = data?.triggers ?? null;
  return (
    <>
      {triggers === null ? (
        <p aria-busy="true">Reading triggers…</p>
      ) : (
        <div class="scroll" role="region" aria-label={`Triggers of ${app}`} tabIndex={0}>
          <table id="triggers">
            <caption>What calls {app} besides requests to its routes</caption>
            <thead>
              <tr>
                <th scope="col">Id</th>
                <th scope="col">Kind</th>
                <th scope="col">What</th>
                <th scope="col">From</th>
                <th scope="col">
                  <span class="visually-hidden">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {triggers.map((t) => (
                <tr key={t.id} data-trigger={t.id} data-kind={t.kind}>
                  <th scope="row" class="mono">
                    {t.id}
                  </th>
                  <td>{t.kind}</td>
                  <td class="mono">{what(t)}</td>
                  <td>{t.source === 'api' ? `the API, ${ago(t.created_at)}` : 'hearth.toml'}</td>
                  <td>{t.source === 'api' ? <RemoveButton app={app} trigger={t} onDone={reload} /> : null}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {triggers.length === 0 ? <p class="empty">No triggers: {app} answers only requests to its routes.</p> : null}
        </div>
      )}
      <AddTrigger app={app} onAdded={reload} />
    </>
  );
}
