// One service: its instances with their health (and the check's output),
// addresses and since when; its health history, newest first (each
// instance's health changes and what the platform did, from `/history`);
// scaling a service of machines, deregistering an instance, removing the
// service. Follows the service's keys on the live stream.

import { useState } from 'preact/hooks';
import { ApiError, api, asApiError, seg } from '../api';
import { setError } from '../errors';
import { useAction, useLive, useResource, useTitle } from '../hooks';
import { navigate } from '../nav';
import type { Health, ServiceDetail, ServiceEvent, ServiceInstance } from '../ops';
import { ErrorNote, LiveBadge, ago, clock, list } from './common';
import './ops.css';

/** The store keys of one service, as `hearth_services::record` lays them out. */
function prefixes(name: string): string[] {
  return [
    `services/defs/${name}`,
    `services/instances/${name}/`,
    `services/health/${name}/`,
    `services/endpoints/${name}`,
    `services/history/${name}/`,
  ];
}

function HealthTag({ health }: { health: Health }) {
  return (
    <span class={`tag tag-${health}`} data-health={health}>
      {health}
    </span>
  );
}

function InstanceRow({
  service,
  instance,
  removable,
  reload,
}: {
  service: string;
  instance: ServiceInstance;
  removable: boolean;
  reload: () => void;
}) {
  // Its refusals go to the page's banner, as the service's own do.
  const action = useAction();
  const busy = action.busy;
  const deregister = () =>
    action.run(
      async () => {
        try {
          await api('DELETE', `/v1/services/${seg(service)}/instances/${seg(instance.id)}`);
          setError(null);
        } catch (error) {
          setError(asApiError(error));
        } finally {
          reload();
        }
      },
      { confirm: `Deregister ${instance.id} from ${service}? It leaves the endpoints at once.` },
    );
  return (
    <tr data-instance={instance.id}>
      <th scope="row" class="mono">
        {instance.id}
        {instance.draining ? <div class="reason">draining</div> : null}
      </th>
      <td>
        <HealthTag health={instance.health} />
        <div class="reason" data-output>
          {instance.output}
        </div>
      </td>
      <td class="mono">
        {instance.address ? `${instance.address}:${instance.port}` : `— (port ${instance.port})`}
        {instance.machine ? (
          <div>
            <a href={`/ui/machines/${seg(instance.machine)}`}>{instance.machine}</a>
          </div>
        ) : null}
      </td>
      <td>
        {instance.since_ms ? (
          <span title={new Date(instance.since_ms).toLocaleString()}>
            {ago(instance.since_ms)} <span class="reason">{clock(instance.since_ms)}</span>
          </span>
        ) : (
          '—'
        )}
      </td>
      <td>
        {instance.ttl_s !== null ? <div>TTL {instance.ttl_s} s</div> : null}
        <div class="mono">{list(instance.checks)}</div>
        {instance.version !== null ? <div class="reason">version {instance.version}</div> : null}
      </td>
      <td class="actions">
        {removable ? (
          <button
            type="button"
            class="danger"
            disabled={busy}
            onClick={deregister}
            aria-label={`Deregister ${instance.id}`}
          >
            {busy ? 'Deregistering…' : 'Deregister'}
          </button>
        ) : (
          '—'
        )}
      </td>
    </tr>
  );
}

interface Moment {
  at: number;
  instance: string | null;
  what: string;
  detail: string;
  /** A health, or the platform's action. */
  kind: string;
}

/** Health changes of the instances there are, and the service's history
 * (which keeps what happened to those gone), newest first. */
function timeline(detail: ServiceDetail, history: ServiceEvent[]): Moment[] {
  const moments: Moment[] = [];
  for (const i of detail.instances) {
    for (const c of i.changes) {
      moments.push({ at: c.at_ms, instance: i.id, what: c.health, detail: c.output, kind: c.health });
    }
  }
  for (const e of history) {
    moments.push({ at: e.at_ms, instance: e.instance, what: e.action, detail: e.reason, kind: 'act' });
  }
  return moments.sort((a, b) => b.at - a.at);
}

/** Reads `/history` itself: an app, also listed as a service, has none. */
function History({ name, detail }: { name: string; detail: ServiceDetail }) {
  const history = useResource<{ entries: ServiceEvent[] }>(`/v1/services/${seg(name)}/history`, prefixes(name)).data;
  if (!history) return <p aria-busy="true">Reading the history…</p>;
  const moments = timeline(detail, history.entries);
  return (
    <div class="scroll" role="region" aria-label="Health history" tabIndex={0}>
      <table id="service-history">
        <caption>Health changes and what hearth did, newest first</caption>
        <thead>
          <tr>
            <th scope="col">When</th>
            <th scope="col">Instance</th>
            <th scope="col">What</th>
            <th scope="col">Why</th>
          </tr>
        </thead>
        <tbody>
          {moments.map((m, i) => (
            <tr key={`${m.at}:${m.instance}:${m.what}:${i}`} data-moment={m.what} data-instance={m.instance ?? ''}>
              <td class="num" title={new Date(m.at).toLocaleString()}>
                {clock(m.at)} <span class="reason">{ago(m.at)}</span>
              </td>
              <td class="mono">{m.instance ?? '—'}</td>
              <td>
                <span class={`tag tag-${m.kind}`}>{m.what}</span>
              </td>
              <td>{m.detail}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {moments.length === 0 ? <p class="empty">Nothing has happened to this service yet.</p> : null}
    </div>
  );
}

function ScaleForm({ name, count, reload }: { name: string; count: number; reload: () => void }) {
  const [value, setValue] = useState(String(count));
  const { busy, error, run } = useAction();
  const [done, setDone] = useState<string | null>(null);
  const submit = (event: Event) => {
    event.preventDefault();
    setDone(null);
    const next = Number(value);
    const valid = Number.isInteger(next) && next >= 0;
    const removes = valid && next < count;
    void run(
      async () => {
        if (!valid) throw new ApiError(0, 'invalid', `${value} is not a count.`, 'Give a whole number of machines, 0 or more.');
        try {
          await api('PUT', `/v1/services/${seg(name)}/count`, { count: next });
          setDone(`${name} now keeps ${next}.`);
        } finally {
          reload();
        }
      },
      removes ? { confirm: `Scale ${name} from ${count} to ${next}? ${count - next} machine(s) will be removed.` } : {},
    );
  };
  return (
    <form class="inline-form" aria-label="Scale the service" onSubmit={submit}>
      <label class="field">
        Machines to keep
        <input
          type="number"
          name="count"
          min={0}
          step={1}
          value={value}
          onInput={(e) => setValue((e.target as HTMLInputElement).value)}
        />
      </label>
      <button type="submit" disabled={busy}>
        {busy ? 'Scaling…' : 'Scale'}
      </button>
      <ErrorNote error={error} />
      {done ? (
        <p class="note" role="status">
          {done}
        </p>
      ) : null}
    </form>
  );
}

function RemoveButton({ name }: { name: string }) {
  const action = useAction();
  const remove = () =>
    action.run(
      async () => {
        try {
          await api('DELETE', `/v1/services/${seg(name)}`);
          setError(null);
          navigate('/ui/services');
        } catch (error) {
          setError(asApiError(error));
        }
      },
      { confirm: `Remove service ${name}? Its machines and records go with it.` },
    );
  return (
    <button type="button" class="danger" disabled={action.busy} onClick={remove}>
      {action.busy ? 'Removing…' : 'Remove the service'}
    </button>
  );
}

export function Service({ name }: { name: string }) {
  useTitle(`Service ${name}`);
  const live = useLive();
  const keys = prefixes(name);
  const { data: detail, error, reload } = useResource<ServiceDetail>(`/v1/services/${seg(name)}`, keys);
  const service = detail?.service;
  const reloadAll = () => reload();
  return (
    <section aria-labelledby="service-title">
      <p class="crumbs">
        <a href="/ui/services">Services</a> /
      </p>
      <div class="heading">
        <h1 id="service-title" tabIndex={-1}>
          Service <span class="mono">{name}</span>
        </h1>
        <LiveBadge connection={live.connection} />
      </div>
      {!detail || !service ? (
        error?.status === 404 ? (
          <p class="empty">
            There is no service named <span class="mono">{name}</span>.{' '}
            <a href="/ui/services">See the services there are.</a>
          </p>
        ) : (
          <p aria-busy="true">Reading the service…</p>
        )
      ) : (
        <>
          <dl class="facts">
            <dt>Kind</dt>
            <dd>
              {service.kind === 'machines'
                ? `machine-backed: ${service.count ?? 0} of ${service.image ?? '?'} on port ${service.port ?? '?'}`
                : service.kind === 'registered'
                  ? 'registered: instances renew a TTL with heartbeats'
                  : 'app'}
            </dd>
            <dt>Passing</dt>
            <dd data-passing={`${service.passing}/${service.instances}`}>
              {service.passing} of {service.instances}
            </dd>
            <dt>Checks</dt>
            <dd class="mono">{list(service.checks)}</dd>
            <dt>Routes</dt>
            <dd class="mono">{list([`${service.name}.localhost`, ...service.routes])}</dd>
            {service.ports.length ? (
              <>
                <dt>Host ports</dt>
                <dd class="mono">{list(service.ports.map((p) => `127.0.0.1:${p}`))}</dd>
              </>
            ) : null}
            {service.rollout ? (
              <>
                <dt>Rollout</dt>
                <dd>
                  v{service.rollout.from} → v{service.rollout.to}: {service.rollout.state}
                  {service.rollout.reason ? <div class="reason">{service.rollout.reason}</div> : null}
                </dd>
              </>
            ) : null}
            {service.problem ? (
              <>
                <dt>Problem</dt>
                <dd>{service.problem}</dd>
              </>
            ) : null}
            {service.description ? (
              <>
                <dt>About</dt>
                <dd>{service.description}</dd>
              </>
            ) : null}
          </dl>
          {service.kind === 'app' ? (
            <p>
              An app serves this name: <a href={`/ui/apps/${seg(name)}`}>see the app</a>.
            </p>
          ) : null}

          <h2>Instances</h2>
          <div class="scroll" role="region" aria-label="Instances" tabIndex={0}>
            <table id="instances">
              <caption>Every instance, passing or not, with what its check said</caption>
              <thead>
                <tr>
                  <th scope="col">Instance</th>
                  <th scope="col">Health</th>
                  <th scope="col">Address</th>
                  <th scope="col">Since</th>
                  <th scope="col">Checked by</th>
                  <th scope="col">Actions</th>
                </tr>
              </thead>
              <tbody>
                {detail.instances.map((i) => (
                  <InstanceRow
                    key={i.id}
                    service={name}
                    instance={i}
                    removable={service.kind === 'registered' && i.ttl_s !== null}
                    reload={reloadAll}
                  />
                ))}
              </tbody>
            </table>
            {detail.instances.length === 0 ? <p class="empty">No instances now.</p> : null}
          </div>

          {service.kind === 'machines' ? (
            <>
              <h2>Scale</h2>
              <ScaleForm key={service.count} name={name} count={service.count ?? 0} reload={reloadAll} />
            </>
          ) : null}

          {service.kind !== 'app' ? (
            <>
              <h2>Health history</h2>
              <History name={name} detail={detail} />
            </>
          ) : null}

          {service.kind !== 'app' ? (
            <>
              <h2>Remove</h2>
              <RemoveButton name={name} />
            </>
          ) : null}
        </>
      )}
    </section>
  );
}
