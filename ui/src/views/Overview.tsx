import { useEffect } from 'preact/hooks';
import type { Status } from '../api';
import { useLive, useResource, useTitle } from '../hooks';
import { EventTable, LiveBadge, bytes, duration } from './common';
import { Fired } from './Fired';

function kvm(status: Status): string {
  const { kvm } = status.host;
  if (kvm.usable === true) return 'usable';
  if (!kvm.present) return 'not present';
  if (!kvm.accessible) return 'present, not accessible';
  if (kvm.usable === false) return 'present, not usable';
  return 'present, being checked';
}

/** Load and free memory are samples, not changes in the store: the status
 * is read again this often for them. */
const SAMPLE_MS = 10_000;

const gib = (n: number) => bytes(n, { unit: 'GiB' });

/** `18.6 GiB free of 23.4 GiB`, with a meter of what is used. */
function Space({ free, total, what }: { free: number; total: number; what: string }) {
  return (
    <>
      {gib(free)} free of {gib(total)}{' '}
      <meter min={0} max={total} value={total - free} high={total * 0.9} aria-label={`${what} used`} />
    </>
  );
}

function Count({ label, value, href }: { label: string; value: number | undefined; href?: string }) {
  const number = value === undefined ? '…' : String(value);
  return (
    <div class="count">
      <dt>{href ? <a href={href}>{label}</a> : label}</dt>
      <dd data-count={label.toLowerCase()}>{number}</dd>
    </div>
  );
}

export function Overview() {
  useTitle('Overview');
  const live = useLive();
  const { data: status, reload } = useResource<Status>('/v1/status', ['machines/']);
  useEffect(() => {
    const timer = window.setInterval(reload, SAMPLE_MS);
    return () => window.clearInterval(timer);
  }, []);
  const resources = status?.host.resources;
  const machines = useResource<{ machines: unknown[] }>('/v1/machines', ['machines/']).data;
  const apps = useResource<{ apps: unknown[] }>('/v1/apps', ['apps/records/']).data;
  const workflows = useResource<{ workflows: unknown[] }>('/v1/workflows', ['workflows/']).data;

  return (
    <section aria-labelledby="overview-title">
      <div class="heading">
        <h1 id="overview-title" tabIndex={-1}>
          Overview
        </h1>
        <LiveBadge connection={live.connection} />
      </div>

      <dl class="counts">
        <Count label="Machines" value={machines?.machines.length} href="/ui/machines" />
        <Count label="Apps" value={apps?.apps.length} href="/ui/apps" />
        <Count label="Workflows" value={workflows?.workflows.length} href="/ui/workflows" />
        <Count label="Revision" value={Math.max(live.revision, status?.store.revision ?? 0) || undefined} />
      </dl>

      <Fired />

      <h2>Host</h2>
      {status ? (
        <dl class="facts">
          <dt>hearth</dt>
          <dd>{status.version}</dd>
          <dt>Up for</dt>
          <dd>{duration(status.uptime_secs * 1000)}</dd>
          {resources ? (
            <>
              <dt>CPU</dt>
              <dd data-host="cpu">
                {resources.cpus} {resources.cpus === 1 ? 'CPU' : 'CPUs'}, load {resources.load.map((l) => l.toFixed(2)).join(' / ')}
              </dd>
              <dt>Memory</dt>
              <dd data-host="memory">
                <Space free={resources.memory_available_bytes} total={resources.memory_total_bytes} what="Memory" />
              </dd>
              <dt>Disk</dt>
              <dd data-host="disk">
                <Space free={resources.disk_available_bytes} total={resources.disk_total_bytes} what="Disk" />
              </dd>
            </>
          ) : null}
          <dt>Machines run on</dt>
          <dd>{status.host.default_backend}</dd>
          <dt>KVM</dt>
          <dd title={status.host.kvm.detail}>{kvm(status)}</dd>
          <dt>QEMU</dt>
          <dd>{status.host.qemu ? (status.host.qemu.version ?? status.host.qemu.path) : 'not found'}</dd>
          <dt>Firecracker</dt>
          <dd>
            {status.host.firecracker
              ? (status.host.firecracker.version ?? status.host.firecracker.path)
              : 'not found'}
          </dd>
          <dt>Store</dt>
          <dd>
            {status.store.backend}, <span class="mono">{status.store.location}</span>
          </dd>
          <dt>Apps answer on</dt>
          <dd class="mono">{status.ingress ?? 'off'}</dd>
          <dt>DNS</dt>
          <dd class="mono">{status.dns.listen ?? `off (${status.dns.problem ?? 'no reason given'})`}</dd>
        </dl>
      ) : (
        <p aria-busy="true">Reading the daemon's status…</p>
      )}

      <h2>Latest events</h2>
      <EventTable events={live.events.slice(0, 10)} caption="The ten latest changes in the store" />
      <p>
        <a href="/ui/events">All events, with filters</a>
      </p>
    </section>
  );
}
