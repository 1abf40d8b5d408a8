// One workflow run: its status, input and output, its journal as a
// timeline (each recorded call and its result, then where it waits and
// for what), its log, and the signal, migrate and cancel forms.

import { useEffect, useState } from 'preact/hooks';
import { ApiError, api, seg, type RunDetail, type RunLogLine, type RunSummary } from '../api';
import { useAction, useLive, useResource, useTitle } from '../hooks';
import { ErrorNote, LiveBadge, ago, clock } from './common';

/** The signal a run waits for, from its `waiting_for` (`signal "vote" (until 7 d)`). */
function awaitedSignal(run: RunSummary): string | null {
  if (run.status !== 'waiting' || !run.waiting_for) return null;
  return /^signal "((?:[^"\\]|\\.)*)"/.exec(run.waiting_for)?.[1] ?? null;
}

const ended = (run: RunSummary) => run.status === 'completed' || run.status === 'failed' || run.status === 'cancelled';

/** A run's input or output: JSON laid out, anything else as it is. */
function Value({ text, id }: { text: string | null; id: string }) {
  if (text === null || text === '') return <p class="empty-value">—</p>;
  let shown = text;
  try {
    shown = JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    // Not JSON: shown as it is.
  }
  return (
    <pre class="value-box" id={id} tabIndex={0}>
      {shown}
    </pre>
  );
}

function Timeline({ run }: { run: RunDetail }) {
  return (
    <ol class="timeline" id="timeline" aria-label="Journal">
      <li class="step step-start">
        <span class="step-when">{clock(run.created_at)}</span>
        <span class="step-call">started by {run.started_by}</span>
        <span class="step-outcome">
          on {run.workflow} v{run.version}
          {run.parent ? `, child of ${run.parent}` : ''}
        </span>
      </li>
      {run.journal.map((step) => (
        <li key={step.seq} class="step" data-seq={step.seq}>
          <span class="step-when">{clock(step.at)}</span>
          <span class="step-call mono">{step.call}</span>
          <span class="step-outcome mono">→ {step.outcome}</span>
        </li>
      ))}
      {run.status === 'waiting' || run.status === 'running' ? (
        <li class={`step step-${run.status}`} data-step={run.status}>
          <span class="step-when">now</span>
          <span class="step-call">{run.status === 'waiting' ? `waits for ${run.waiting_for ?? 'something'}` : 'running'}</span>
          {run.deadline ? <span class="step-outcome">until {new Date(run.deadline).toLocaleString()}</span> : null}
        </li>
      ) : (
        <li class={`step step-${run.status}`} data-step={run.status}>
          <span class="step-when">{run.finished_at ? clock(run.finished_at) : ''}</span>
          <span class="step-call">{run.status}</span>
          {run.error ? <span class="step-outcome">{run.error}</span> : null}
        </li>
      )}
    </ol>
  );
}

function SignalForm({ run, onSent }: { run: RunSummary; onSent: () => void }) {
  const awaited = awaitedSignal(run);
  const [name, setName] = useState(awaited ?? '');
  const [data, setData] = useState('');
  const { busy, error, run: act } = useAction();
  const [sent, setSent] = useState<string | null>(null);
  // Fill in the signal the run waits for, unless something was typed.
  useEffect(() => {
    if (awaited && !name) setName(awaited);
  }, [awaited]);
  const send = (event: Event) => {
    event.preventDefault();
    setSent(null);
    void act(async () => {
      const signal = name.trim() || awaited || '';
      if (!signal) throw new ApiError(0, 'invalid', 'The signal needs a name.', 'Use the name the workflow waits for.');
      await api('POST', `/v1/runs/${seg(run.id)}/signals`, { name: signal, data });
      setSent(signal);
      setData('');
      onSent();
    });
  };
  return (
    <form class="signal" aria-label="Send a signal" onSubmit={send}>
      <label class="field">
        Signal
        <input
          type="text"
          name="signal"
          value={name}
          placeholder={awaited ?? 'e.g. vote'}
          autocomplete="off"
          spellcheck={false}
          onInput={(e) => setName((e.target as HTMLInputElement).value)}
        />
      </label>
      <label class="field">
        Data
        <textarea
          name="data"
          rows={3}
          value={data}
          spellcheck={false}
          placeholder='e.g. {"who": "ann", "approve": true}'
          onInput={(e) => setData((e.target as HTMLTextAreaElement).value)}
        />
      </label>
      <div>
        <button type="submit" disabled={busy}>
          {busy ? 'Sending…' : 'Send signal'}
        </button>
      </div>
      <ErrorNote error={error} />
      {sent ? (
        <p class="note" role="status">
          Sent {sent}.
        </p>
      ) : null}
    </form>
  );
}

function CancelButton({ run, onDone }: { run: RunSummary; onDone: () => void }) {
  const { busy, error, run: act } = useAction();
  const cancel = () =>
    act(
      async () => {
        await api('POST', `/v1/runs/${seg(run.id)}/cancel`);
        onDone();
      },
      { confirm: `Cancel run ${run.id}? It stops where it is and does not resume.` },
    );
  return (
    <div>
      <button type="button" class="danger" disabled={busy} onClick={cancel}>
        {busy ? 'Cancelling…' : 'Cancel the run'}
      </button>
      <ErrorNote error={error} />
    </div>
  );
}

/** Moves a run to another version of its workflow: its next replay
 * checks the new code against the journal. */
function MigrateForm({ run, onDone }: { run: RunSummary; onDone: () => void }) {
  const { data } = useResource<{ versions: { number: number; created_at: number }[]; active: number }>(
    `/v1/workflows/${seg(run.workflow)}`,
    [`workflows/defs/${run.workflow}`],
  );
  const others = (data?.versions ?? []).filter((v) => v.number !== run.version);
  const [version, setVersion] = useState('');
  const { busy, error, run: act } = useAction();
  const [moved, setMoved] = useState<number | null>(null);
  if (data === null) return null;
  if (others.length === 0) {
    return (
      <p class="empty" id="migrate-none">
        {run.workflow} has no other version to move this run to. Deploy one with{' '}
        <code>hearth workflow deploy {run.workflow} workflow.wasm</code>.
      </p>
    );
  }
  const chosen = version || String(others[others.length - 1].number);
  const migrate = (event: Event) => {
    event.preventDefault();
    void act(async () => {
      await api('POST', `/v1/runs/${seg(run.id)}/migrate`, { version: Number(chosen) });
      setMoved(Number(chosen));
      onDone();
    });
  };
  return (
    <form class="migrate" aria-label="Migrate the run" onSubmit={migrate}>
      <label class="field">
        Version
        <select name="version" value={chosen} onChange={(e) => setVersion((e.target as HTMLSelectElement).value)}>
          {others.map((v) => (
            <option key={v.number} value={String(v.number)}>
              v{v.number}
              {v.number === data.active ? ' (active)' : ''}, deployed {ago(v.created_at)}
            </option>
          ))}
        </select>
      </label>
      <div>
        <button type="submit" disabled={busy}>
          {busy ? 'Migrating…' : 'Migrate'}
        </button>
      </div>
      <ErrorNote error={error} />
      {moved !== null ? (
        <p class="note" role="status">
          Moved to v{moved}.
        </p>
      ) : null}
    </form>
  );
}

function RunLog({ id }: { id: string }) {
  // `log` calls are journal steps; what the run printed is kept apart.
  const { data } = useResource<{ lines: RunLogLine[] }>(`/v1/runs/${seg(id)}/logs`, [
    `workflows/journal/${id}/`,
    `workflows/output/${id}`,
  ]);
  const lines = data?.lines ?? [];
  return (
    <div class="scroll log" role="region" aria-label={`Log of run ${id}`} tabIndex={0}>
      <ol id="run-log">
        {lines.map((l, i) => (
          <li key={`${l.time}:${i}`} data-source={l.source}>
            <span class="log-time">{clock(l.time)}</span> <span class="log-stream">{l.source}</span>{' '}
            <span class="log-text">{l.text}</span>
          </li>
        ))}
      </ol>
      {lines.length === 0 ? <p class="empty">Nothing logged yet.</p> : null}
    </div>
  );
}

export function Run({ name: id }: { name: string }) {
  useTitle(`Run ${id}`);
  const live = useLive();
  const { data: run, error, reload } = useResource<RunDetail>(`/v1/runs/${seg(id)}`, [
    `workflows/runs/${id}`,
    `workflows/journal/${id}/`,
    `workflows/signals/${id}/`,
  ]);
  return (
    <section aria-labelledby="run-title">
      <p class="crumbs">
        <a href="/ui/workflows">Workflows</a> /
      </p>
      <div class="heading">
        <h1 id="run-title" tabIndex={-1}>
          Run <span class="mono">{id}</span>
        </h1>
        <LiveBadge connection={live.connection} />
      </div>
      {run === null ? (
        error?.status === 404 ? (
          <p class="empty">
            There is no run <span class="mono">{id}</span>. <a href="/ui/workflows">See the latest runs.</a>
          </p>
        ) : (
          <p aria-busy="true">Reading the run…</p>
        )
      ) : (
        <>
          <dl class="facts">
            <dt>Status</dt>
            <dd>
              <span class={`tag tag-run-${run.status}`} data-status={run.status}>
                {run.status}
              </span>
              {run.waiting_for ? <span class="reason"> waiting for {run.waiting_for}</span> : null}
            </dd>
            <dt>Workflow</dt>
            <dd class="mono">
              {run.workflow} v{run.version}
            </dd>
            <dt>Started</dt>
            <dd>
              {ago(run.created_at)} by {run.started_by}
              {run.executions > 1 ? `, ${run.executions} executions` : ''}
            </dd>
            {run.finished_at ? (
              <>
                <dt>Ended</dt>
                <dd>{ago(run.finished_at)}</dd>
              </>
            ) : null}
          </dl>
          {ended(run) ? null : (
            <>
              <h2>Signal</h2>
              <SignalForm run={run} onSent={reload} />
              <h2>Migrate</h2>
              <MigrateForm run={run} onDone={reload} />
              <h2>Cancel</h2>
              <CancelButton run={run} onDone={reload} />
            </>
          )}
          <div class="pair">
            <div>
              <h2>Input</h2>
              <Value text={run.input} id="run-input" />
            </div>
            <div>
              <h2>{run.error ? 'Error' : 'Output'}</h2>
              <Value text={run.error ?? run.output} id="run-output" />
            </div>
          </div>
          <h2>Timeline</h2>
          <Timeline run={run} />
          {run.pending_signals.length ? (
            <>
              <h2>Signals not taken yet</h2>
              <ul class="pending">
                {run.pending_signals.map((s, i) => (
                  <li key={`${s.sent_at}:${i}`}>
                    <span class="mono">{s.name}</span> {s.data ? <span class="mono">{s.data}</span> : null}, sent{' '}
                    {ago(s.sent_at)}
                  </li>
                ))}
              </ul>
            </>
          ) : null}
          <h2>Log</h2>
          <RunLog id={run.id} />
        </>
      )}
    </section>
  );
}
