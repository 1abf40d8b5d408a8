// The overview's "what fired" panel: how many alerts fire now (and how
// many of them are silenced), and the latest lines of the alert history,
// with a link to the Alerts view. Follows `alerts/` on the live stream.

import { useResource } from '../hooks';
import { ALERTS_PREFIX, historyText, type AlertHistoryEntry, type AlertList } from '../ops';
import { ago } from './common';
import './ops.css';

const LINES = 5;

export function Fired() {
  const alerts = useResource<AlertList>('/v1/alerts', [ALERTS_PREFIX]).data;
  const history = useResource<{ entries: AlertHistoryEntry[] }>(
    `/v1/alerts/history?limit=${LINES}`,
    [ALERTS_PREFIX],
  ).data;
  const firing = alerts?.alerts.filter((a) => a.phase === 'firing') ?? null;
  const silenced = firing?.filter((a) => a.muted).length ?? 0;
  return (
    <section class="fired" aria-labelledby="fired-title" id="what-fired">
      <h2 id="fired-title">What fired</h2>
      <p>
        <a href="/ui/alerts">
          <span data-firing-count={firing?.length ?? ''}>{firing === null ? '…' : firing.length}</span> firing
          {silenced ? `, ${silenced} silenced` : ''}
        </a>
      </p>
      {history === null ? (
        <p aria-busy="true">Reading the alert history…</p>
      ) : history.entries.length === 0 ? (
        <p class="empty">Nothing has fired yet.</p>
      ) : (
        <ul class="fired-lines">
          {history.entries.map((e) => (
            <li key={e.id} data-rule={e.rule}>
              <span class={`tag tag-alert-${e.status}`}>{e.status}</span> <span class="mono">{e.rule}</span>:{' '}
              {historyText(e)} <span class="reason">{ago(e.at)}</span>
            </li>
          ))}
        </ul>
      )}
      <p>
        <a href="/ui/alerts">All alerts, silences and rules</a>
      </p>
    </section>
  );
}
