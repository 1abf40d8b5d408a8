// The services: of machines hearth keeps, registered from anywhere, and
// apps; each with its instances passing out of all, where it answers, and
// when it last changed. Follows `services/` and `apps/records/` on the
// live stream (not the apps' own data under `apps/data/`).

import { useEffect, useRef, useState } from 'preact/hooks';
import { api, seg } from '../api';
import { useLive, useResource, useTitle } from '../hooks';
import { live, touches } from '../live';
import { SERVICES_PREFIX, type Service, type ServiceDetail, type ServiceEvent } from '../ops';
import { LiveBadge, ago, clock } from './common';
import './ops.css';

/** Services whose instances are read for their addresses and last change. */
const DETAILED = 50;

const KIND_TEXT: Record<Service['kind'], string> = {
  machines: 'machine-backed',
  registered: 'registered',
  app: 'app',
};

interface Extra {
  /** Unix ms of the newest change: an instance's health, or a history entry. */
  changed: number;
  addresses: string[];
}

/** The addresses and the last change of each service of machines or
 * registered one: `GET /v1/services` has neither, so each service's own
 * record and history are read (for the first DETAILED). Read again when
 * the services named change, or on a change under `services/` (which is
 * where instances, health and history are), not whenever the list is. */
function useExtras(services: Service[] | null): Record<string, Extra> {
  const [extras, setExtras] = useState<Record<string, Extra>>({});
  const [changes, setChanges] = useState(0);
  const latest = useRef(services);
  latest.current = services;
  const names =
    services === null
      ? null
      : services
          .filter((s) => s.kind !== 'app')
          .slice(0, DETAILED)
          .map((s) => s.name)
          .join('\n');
  useEffect(() => {
    let pending: number | null = null;
    const unsubscribe = live.subscribe((update) => {
      if (!touches(update, [SERVICES_PREFIX]) || pending !== null) return;
      pending = window.setTimeout(() => {
        pending = null;
        setChanges((n) => n + 1);
      }, 200);
    });
    return () => {
      unsubscribe();
      if (pending !== null) window.clearTimeout(pending);
    };
  }, []);
  useEffect(() => {
    const list = latest.current;
    if (names === null || !list) return;
    let stopped = false;
    const read = list
      .filter((s) => s.kind !== 'app')
      .slice(0, DETAILED)
      .map(async (s): Promise<[string, Extra]> => {
        const base = s.created_at * 1000;
        try {
          const [detail, history] = await Promise.all([
            api<ServiceDetail>('GET', `/v1/services/${seg(s.name)}`),
            api<{ entries: ServiceEvent[] }>('GET', `/v1/services/${seg(s.name)}/history`),
          ]);
          const times = [
            base,
            ...detail.instances.map((i) => i.since_ms ?? 0),
            ...history.entries.map((e) => e.at_ms),
          ];
          const addresses = detail.instances.map((i) =>
            i.address ? `${i.address}:${i.port}` : `${i.machine ?? i.id} (no address yet)`,
          );
          return [s.name, { changed: Math.max(...times), addresses }];
        } catch {
          // Removed meanwhile: the list is read again on that event.
          return [s.name, { changed: base, addresses: [] }];
        }
      });
    void Promise.all(read).then((pairs) => {
      if (!stopped) setExtras(Object.fromEntries(pairs));
    });
    return () => {
      stopped = true;
    };
  }, [names, changes]);
  return extras;
}

function Where({ service, extra }: { service: Service; extra: Extra | undefined }) {
  const lines: preact.JSX.Element[] = [];
  if (service.kind === 'app') {
    for (const url of service.routes) {
      lines.push(
        <div key={url}>
          <a href={url}>{url}</a>
        </div>,
      );
    }
  } else {
    for (const a of (extra?.addresses ?? []).slice(0, 3)) lines.push(<div key={a}>{a}</div>);
    if ((extra?.addresses.length ?? 0) > 3) lines.push(<div key="more">and {extra!.addresses.length - 3} more</div>);
    for (const route of service.routes) lines.push(<div key={`route:${route}`}>route {route}</div>);
    for (const port of service.ports) lines.push(<div key={`port:${port}`}>127.0.0.1:{port.split(':')[0]}</div>);
  }
  return lines.length ? <>{lines}</> : <>—</>;
}

function Row({ service, extra }: { service: Service; extra: Extra | undefined }) {
  // A sleeping instance passed before it fell asleep: the next request wakes it.
  const asleep = service.sleeping ?? 0;
  const healthy = service.passing + asleep === service.instances && service.instances > 0;
  const href = service.kind === 'app' ? `/ui/apps/${seg(service.name)}` : `/ui/services/${seg(service.name)}`;
  const changed = extra?.changed ?? service.created_at * 1000;
  return (
    <tr data-service={service.name}>
      <th scope="row" class="mono">
        <a href={href}>{service.name}</a>
      </th>
      <td>
        {KIND_TEXT[service.kind]}
        {service.kind === 'machines' && service.image ? <div class="reason mono">{service.image}</div> : null}
      </td>
      <td>
        <span
          class={`tag ${healthy ? 'tag-passing' : service.passing + asleep === 0 ? 'tag-critical' : 'tag-warning'}`}
          data-instances={`${service.passing}/${service.instances}`}
        >
          {service.passing}/{service.instances} passing
        </span>
        {asleep > 0 ? <div class="reason">{asleep} asleep</div> : null}
        {service.kind === 'machines' && service.count !== null && service.count !== service.instances ? (
          <div class="reason">keeps {service.count}</div>
        ) : null}
        {service.problem ? <div class="reason">{service.problem}</div> : null}
      </td>
      <td class="mono">
        <Where service={service} extra={extra} />
      </td>
      <td title={new Date(changed).toLocaleString()}>
        {ago(changed)} <span class="reason">{clock(changed)}</span>
      </td>
    </tr>
  );
}

export function Services() {
  useTitle('Services');
  const live = useLive();
  const { data } = useResource<{ services: Service[] }>('/v1/services', [SERVICES_PREFIX, 'apps/records/']);
  const services = data?.services ?? null;
  const extras = useExtras(services);
  return (
    <section aria-labelledby="services-title">
      <div class="heading">
        <h1 id="services-title" tabIndex={-1}>
          Services
        </h1>
        <LiveBadge connection={live.connection} />
      </div>
      {services === null ? (
        <p aria-busy="true">Reading services…</p>
      ) : (
        <div class="scroll" role="region" aria-label="Services" tabIndex={0}>
          <table id="services">
            <caption>Everything that serves: services of machines, registered instances and apps</caption>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Kind</th>
                <th scope="col">Instances</th>
                <th scope="col">Address or route</th>
                <th scope="col">Last change</th>
              </tr>
            </thead>
            <tbody>
              {services.map((s) => (
                <Row key={s.name} service={s} extra={extras[s.name]} />
              ))}
            </tbody>
          </table>
          {services.length === 0 ? (
            <p class="empty">
              No services. Make one with <code>hearth service create web --image nginx:alpine --port 80</code>, or
              register an instance with <code>hearth service register NAME --address A --port P --ttl 30s</code>.
            </p>
          ) : null}
        </div>
      )}
    </section>
  );
}
