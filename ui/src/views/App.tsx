// One app: what it serves, its versions (with a rollback to any), a deploy
// of a new version, its traffic over the last hour, and its log, live.

import { useEffect, useState } from 'preact/hooks';
import {
  api,
  asApiError,
  seg,
  type AppDetail,
  type AppLogLine,
  type AppVersion,
  type MetricQueryResult,
} from '../api';
import { setError } from '../errors';
import { useLive, useResource, useTitle } from '../hooks';
import { ErrorNote, Links, LiveBadge, ago, bytes, clock, list } from './common';
import { DeployForm } from './Deploy';
import { Sparkline, type Point } from './Sparkline';
import { Triggers } from './Triggers';

/** Log lines kept on the page. */
const LOG_LINES = 500;
/** How often the traffic charts are read again: the daemon samples every 10 s. */
const METRICS_EVERY_MS = 10_000;

function Versions({ app, reload }: { app: AppDetail; reload: () => void }) {
  const [busy, setBusy] = useState<number | null>(null);
  const rollback = async (to: number) => {
    setBusy(to);
    try {
      await api<AppVersion>('POST', `/v1/apps/${seg(app.name)}/rollback`, { to });
      setError(null);
    } catch (error) {
      setError(asApiError(error));
    } finally {
      setBusy(null);
      reload();
    }
  };
  const versions = app.versions.slice().sort((a, b) => b.number - a.number);
  return (
    <div class="scroll" role="region" aria-label="Versions" tabIndex={0}>
      <table id="versions">
        <caption>Every version deployed, newest first; the active one serves new requests</caption>
        <thead>
          <tr>
            <th scope="col">Version</th>
            <th scope="col">Deployed</th>
            <th scope="col">Size</th>
            <th scope="col">SHA-256</th>
            <th scope="col">Actions</th>
          </tr>
        </thead>
        <tbody>
          {versions.map((v) => (
            <tr key={v.number} data-version={v.number} aria-current={v.number === app.active ? 'true' : undefined}>
              <th scope="row" class="num">
                v{v.number}{' '}
                {v.number === app.active ? <span class="tag tag-running">active</span> : null}
              </th>
              <td>{ago(v.created_at)}</td>
              <td class="num">{bytes(v.size)}</td>
              <td class="mono" title={v.sha256}>
                {v.sha256.slice(0, 12)}
              </td>
              <td class="actions">
                {v.number === app.active ? (
                  '—'
                ) : (
                  <button type="button" disabled={busy !== null} onClick={() => rollback(v.number)}>
                    {busy === v.number ? 'Rolling back…' : `Roll back to v${v.number}`}
                  </button>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

/** The points of every series of a metric, merged into one line: summed
 * (request rates of the app's routes add up) or the worst of them. */
function merge(result: MetricQueryResult, how: 'sum' | 'max'): Point[] {
  const at = new Map<number, number>();
  for (const series of result.series) {
    for (const p of series.points) {
      const before = at.get(p.at);
      at.set(p.at, before === undefined ? p.value : how === 'sum' ? before + p.value : Math.max(before, p.value));
    }
  }
  return [...at.entries()].sort((a, b) => a[0] - b[0]).map(([t, value]) => ({ at: t, value }));
}

const METRICS = [
  { name: 'app_request_rate', label: 'Requests', how: 'sum', format: (v: number) => `${v.toFixed(v < 10 ? 2 : 0)}/s` },
  { name: 'app_error_ratio', label: 'Errors', how: 'max', format: (v: number) => `${(v * 100).toFixed(1)} %` },
  { name: 'app_latency_p99_ms', label: 'p99 latency', how: 'max', format: (v: number) => `${v.toFixed(1)} ms` },
] as const;

interface Traffic {
  since: number;
  until: number;
  lines: Point[][];
}

/** Request rate, error ratio and p99 latency over the last hour, a point a minute. */
function TrafficCharts({ app }: { app: string }) {
  const [traffic, setTraffic] = useState<Traffic | null>(null);
  const [error, setLocalError] = useState<ReturnType<typeof asApiError> | null>(null);
  useEffect(() => {
    let stopped = false;
    const read = async () => {
      try {
        const results = await Promise.all(
          METRICS.map((m) =>
            api<MetricQueryResult>(
              'GET',
              `/v1/metrics/query?name=${m.name}&match=${seg(`app=${app}`)}&since=1h&step=1m`,
            ).catch((e) => {
              // No series of that name yet (nothing was served since the
              // daemon started): an empty chart, not an error.
              if (asApiError(e).status === 404) return null;
              throw e;
            }),
          ),
        );
        if (stopped) return;
        const now = Date.now();
        const first = results.find((r) => r !== null);
        setTraffic({
          since: first?.since_ms ?? now - 3_600_000,
          until: first?.until_ms ?? now,
          lines: results.map((r, i) => (r ? merge(r, METRICS[i].how) : [])),
        });
        setLocalError(null);
      } catch (e) {
        if (!stopped) setLocalError(asApiError(e));
      }
    };
    void read();
    const timer = window.setInterval(read, METRICS_EVERY_MS);
    return () => {
      stopped = true;
      window.clearInterval(timer);
    };
  }, [app]);
  if (error) return <ErrorNote error={error} />;
  if (!traffic) return <p aria-busy="true">Reading the metrics…</p>;
  return (
    <div class="sparks">
      {METRICS.map((m, i) => (
        <Sparkline
          key={m.name}
          label={m.label}
          points={traffic.lines[i]}
          format={m.format}
          since={traffic.since}
          until={traffic.until}
        />
      ))}
    </div>
  );
}

type LogState = 'connecting' | 'live' | 'reconnecting' | 'ended';

/** The app's log: its last lines, then each new one as it is written. */
function useAppLog(app: string): { lines: AppLogLine[]; state: LogState } {
  const [lines, setLines] = useState<AppLogLine[]>([]);
  const [state, setState] = useState<LogState>('connecting');
  useEffect(() => {
    let kept: AppLogLine[] = [];
    const source = new EventSource(`/v1/apps/${seg(app)}/logs?follow=true&tail=200`);
    // Each (re)connection starts with the last lines again: start over.
    source.addEventListener('open', () => {
      kept = [];
      setLines(kept);
      setState('live');
    });
    source.addEventListener('log', (message) => {
      try {
        kept = [...kept, JSON.parse((message as MessageEvent<string>).data) as AppLogLine].slice(-LOG_LINES);
      } catch {
        return;
      }
      setLines(kept);
    });
    source.addEventListener('error', () => {
      // EventSource retries a stream that ended; one refused is closed.
      setState(source.readyState === EventSource.CLOSED ? 'ended' : 'reconnecting');
    });
    return () => source.close();
  }, [app]);
  return { lines, state };
}

const LOG_STATE_TEXT: Record<LogState, string> = {
  connecting: 'Connecting…',
  live: 'Following',
  reconnecting: 'Reconnecting…',
  ended: 'Stopped: the daemon refused the log stream; reload the page',
};

function AppLog({ app }: { app: string }) {
  const { lines, state } = useAppLog(app);
  const [filter, setFilter] = useState('');
  const needle = filter.toLowerCase();
  const shown = needle ? lines.filter((l) => l.text.toLowerCase().includes(needle) || l.stream === needle) : lines;
  return (
    <>
      <form class="filters" role="search" aria-label="Filter the log" onSubmit={(e) => e.preventDefault()}>
        <label>
          Show lines containing
          <input
            type="search"
            name="log-filter"
            value={filter}
            autocomplete="off"
            spellcheck={false}
            placeholder="e.g. GET /"
            onInput={(e) => setFilter((e.target as HTMLInputElement).value)}
          />
        </label>
        <p class={`live live-${state === 'live' ? 'live' : 'connecting'}`} data-log-state={state}>
          {LOG_STATE_TEXT[state]}
        </p>
      </form>
      <div class="scroll log" role="region" aria-label={`Log of ${app}`} tabIndex={0}>
        <ol id="app-log">
          {shown.map((l, i) => (
            <li key={`${l.time}:${i}`} data-stream={l.stream}>
              <span class="log-time">{clock(l.time)}</span> <span class="log-stream">v{l.version} {l.stream}</span>{' '}
              <span class="log-text">{l.text}</span>
            </li>
          ))}
        </ol>
        {shown.length === 0 ? (
          <p class="empty">{lines.length ? `No line contains "${filter}".` : 'Nothing logged yet.'}</p>
        ) : null}
      </div>
    </>
  );
}

export function App({ name }: { name: string }) {
  useTitle(`App ${name}`);
  const live = useLive();
  const { data: app, error, reload } = useResource<AppDetail>(`/v1/apps/${seg(name)}`, [`apps/records/${name}`]);
  return (
    <section aria-labelledby="app-title">
      <p class="crumbs">
        <a href="/ui/apps">Apps</a> /
      </p>
      <div class="heading">
        <h1 id="app-title" tabIndex={-1}>
          App <span class="mono">{name}</span>
        </h1>
        <LiveBadge connection={live.connection} />
      </div>
      {app === null ? (
        error?.status === 404 ? (
          <p class="empty">
            There is no app named <span class="mono">{name}</span>. <a href="/ui/apps">See the apps there are.</a>
          </p>
        ) : (
          <p aria-busy="true">Reading the app…</p>
        )
      ) : (
        <>
          <dl class="facts">
            <dt>Serving</dt>
            <dd data-serving={app.serving ?? 'none'}>
              {app.serving === null ? 'nothing' : `v${app.serving}`}
              {app.serving !== null && app.serving !== app.active ? ` (v${app.active} is loading)` : null}
              {app.error ? <div class="reason">{app.error}</div> : null}
            </dd>
            <dt>Routes</dt>
            <dd class="mono">{list(app.routes)}</dd>
            <dt>Addresses</dt>
            <dd class="mono">
              <Links urls={app.urls} />
            </dd>
          </dl>
          <h2>Versions</h2>
          <Versions app={app} reload={reload} />
          <h2>Triggers</h2>
          <Triggers app={name} />
          <h2>Deploy a new version</h2>
          <DeployForm app={name} onDeployed={reload} />
          <h2>Traffic, last hour</h2>
          <TrafficCharts app={name} />
          <h2>Log</h2>
          <AppLog app={name} />
        </>
      )}
    </section>
  );
}
