import { useState } from 'preact/hooks';
import { ApiError, api, seg, type RunStatus, type RunSummary as Run } from '../api';
import { useAction, useLive, useResource, useTitle } from '../hooks';
import { navigate } from '../nav';
import { ErrorNote, LiveBadge, ago, list } from './common';

interface Workflow {
  name: string;
  active: number;
  webhooks: string[];
  crons: string[];
  events: string[];
  updated_at: number;
}

const STATUSES: RunStatus[] = ['running', 'waiting', 'completed', 'failed', 'cancelled'];

/** Runs shown, newest first. */
const RUNS = 50;

function triggers(w: Workflow): string {
  return list([...w.webhooks, ...w.crons.map((c) => `cron ${c}`), ...w.events.map((e) => `events under ${e}`)]);
}

/** Starts a run of a deployed workflow, then opens its page. */
function StartRun({ workflows }: { workflows: Workflow[] }) {
  const [workflow, setWorkflow] = useState('');
  const [id, setId] = useState('');
  const [input, setInput] = useState('');
  const { busy, error, run: act } = useAction();
  const chosen = workflow || workflows[0]?.name || '';
  const start = (event: Event) => {
    event.preventDefault();
    void act(async () => {
      if (input.trim()) {
        try {
          JSON.parse(input);
        } catch (failure) {
          const why = failure instanceof Error ? failure.message : String(failure);
          throw new ApiError(0, 'invalid_json', `The input is not JSON: ${why}.`, 'Fix the input, or leave it empty.');
        }
      }
      const body: { input: string; id?: string } = { input: input.trim() };
      if (id.trim()) body.id = id.trim();
      const run = await api<Run>('POST', `/v1/workflows/${seg(chosen)}/runs`, body);
      navigate(`/ui/runs/${seg(run.id)}`);
    });
  };
  return (
    <form class="start-run" aria-label="Start a run" onSubmit={start}>
      <label class="field">
        Workflow
        <select name="workflow" value={chosen} onChange={(e) => setWorkflow((e.target as HTMLSelectElement).value)}>
          {workflows.map((w) => (
            <option key={w.name} value={w.name}>
              {w.name}
            </option>
          ))}
        </select>
      </label>
      <label class="field">
        Run id (optional)
        <input
          type="text"
          name="id"
          value={id}
          placeholder="a new id"
          autocomplete="off"
          spellcheck={false}
          onInput={(e) => setId((e.target as HTMLInputElement).value)}
        />
      </label>
      <label class="field">
        Input (JSON)
        <textarea
          name="input"
          rows={3}
          value={input}
          spellcheck={false}
          placeholder='e.g. {"request": "a new laptop"}'
          onInput={(e) => setInput((e.target as HTMLTextAreaElement).value)}
        />
      </label>
      <div>
        <button type="submit" disabled={busy || !chosen}>
          {busy ? 'Starting…' : 'Start run'}
        </button>
      </div>
      <ErrorNote error={error} />
    </form>
  );
}

export function Workflows() {
  useTitle('Workflows');
  const live = useLive();
  const workflows = useResource<{ workflows: Workflow[] }>('/v1/workflows', ['workflows/']).data?.workflows ?? null;
  const [status, setStatus] = useState<RunStatus | 'all'>('all');
  const runsPath = status === 'all' ? '/v1/runs' : `/v1/runs?status=${status}`;
  const runs = useResource<{ runs: Run[] }>(runsPath, ['workflows/runs/']).data?.runs ?? null;
  const latest = (runs ?? []).slice().sort((a, b) => b.created_at - a.created_at).slice(0, RUNS);
  return (
    <section aria-labelledby="workflows-title">
      <div class="heading">
        <h1 id="workflows-title" tabIndex={-1}>
          Workflows
        </h1>
        <LiveBadge connection={live.connection} />
      </div>
      {workflows === null ? (
        <p aria-busy="true">Reading workflows…</p>
      ) : (
        <div class="scroll" role="region" aria-label="Workflows" tabIndex={0}>
          <table id="workflows">
            <caption>Deployed workflows and what starts them</caption>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Active version</th>
                <th scope="col">Triggers</th>
                <th scope="col">Deployed</th>
              </tr>
            </thead>
            <tbody>
              {workflows.map((w) => (
                <tr key={w.name} data-workflow={w.name}>
                  <th scope="row" class="mono">
                    {w.name}
                  </th>
                  <td class="num">v{w.active}</td>
                  <td class="mono">{triggers(w)}</td>
                  <td>{ago(w.updated_at)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {workflows.length === 0 ? (
            <p class="empty">
              No workflows. Deploy one with <code>hearth workflow deploy NAME workflow.wasm</code>.
            </p>
          ) : null}
        </div>
      )}

      {workflows?.length ? (
        <>
          <h2>Start a run</h2>
          <StartRun workflows={workflows} />
        </>
      ) : null}

      <h2>Latest runs</h2>
      <form class="filters" role="search" aria-label="Filter runs" onSubmit={(e) => e.preventDefault()}>
        <label>
          Status
          <select
            name="status"
            value={status}
            onChange={(e) => setStatus((e.target as HTMLSelectElement).value as RunStatus | 'all')}
          >
            <option value="all">all</option>
            {STATUSES.map((s) => (
              <option key={s} value={s}>
                {s}
              </option>
            ))}
          </select>
        </label>
      </form>
      {runs === null ? (
        <p aria-busy="true">Reading runs…</p>
      ) : (
        <div class="scroll" role="region" aria-label="Latest runs" tabIndex={0}>
          <table id="runs">
            <caption>
              The {RUNS} latest {status === 'all' ? '' : `${status} `}runs, newest first
            </caption>
            <thead>
              <tr>
                <th scope="col">Run</th>
                <th scope="col">Workflow</th>
                <th scope="col">Status</th>
                <th scope="col">Started</th>
              </tr>
            </thead>
            <tbody>
              {latest.map((run) => (
                <tr key={run.id} data-run={run.id}>
                  <th scope="row" class="mono">
                    <a href={`/ui/runs/${seg(run.id)}`}>{run.id}</a>
                  </th>
                  <td class="mono">
                    {run.workflow} v{run.version}
                  </td>
                  <td>
                    <span class={`tag tag-run-${run.status}`}>{run.status}</span>
                    {run.waiting_for ? <div class="reason">waiting for {run.waiting_for}</div> : null}
                    {run.error ? <div class="reason">{run.error}</div> : null}
                  </td>
                  <td>{ago(run.created_at)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {latest.length === 0 ? (
            <p class="empty">
              {status === 'all' ? 'No runs yet.' : `No ${status} runs.`} Start one with{' '}
              <code>hearth workflow start NAME</code>.
            </p>
          ) : null}
        </div>
      )}
    </section>
  );
}
