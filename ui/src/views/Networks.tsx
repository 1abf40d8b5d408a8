import { seg } from '../api';
import { useLive, useResource, useTitle } from '../hooks';
import { NETWORK_PREFIXES, faultOn, type Fault, type Lab, type Network } from '../networks';
import { LiveBadge } from './common';
import './networks.css';

/** The lab that created a network, if one did. */
export function labOf(labs: Lab[] | undefined, network: string): string | null {
  return labs?.find((l) => l.networks.includes(network))?.name ?? null;
}

export function Networks() {
  useTitle('Networks');
  const live = useLive();
  const { data } = useResource<{ networks: Network[] }>('/v1/networks', NETWORK_PREFIXES);
  const faults = useResource<{ faults: Fault[] }>('/v1/faults', ['faults/', 'machines/']).data?.faults ?? [];
  const labs = useResource<{ labs: Lab[] }>('/v1/labs', ['labs/']).data?.labs;
  const networks = data?.networks ?? null;
  return (
    <section aria-labelledby="networks-title">
      <div class="heading">
        <h1 id="networks-title" tabIndex={-1}>
          Networks
        </h1>
        <LiveBadge connection={live.connection} />
      </div>
      {networks === null ? (
        <p aria-busy="true">Reading networks…</p>
      ) : (
        <div class="scroll" role="region" aria-label="Networks" tabIndex={0}>
          <table id="networks">
            <caption>Private networks, their machines and the faults broken into them</caption>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Subnet</th>
                <th scope="col">Gateway</th>
                <th scope="col">NAT</th>
                <th scope="col">DNS</th>
                <th scope="col">Machines</th>
                <th scope="col">Active faults</th>
                <th scope="col">Lab</th>
              </tr>
            </thead>
            <tbody>
              {networks.map((n) => {
                const members = new Set(n.machines.map((m) => m.machine));
                const active = faults.filter((f) => faultOn(f, members)).length;
                return (
                  <tr key={n.name} data-network={n.name}>
                    <th scope="row" class="mono">
                      <a href={`/ui/networks/${seg(n.name)}`}>{n.name}</a>
                    </th>
                    <td class="mono">{n.subnet}</td>
                    <td class="mono">{n.gateway}</td>
                    <td>{n.nat ? 'yes' : 'no'}</td>
                    <td class="mono">NAME.{n.name}.hearth</td>
                    <td data-count="machines">{n.machines.length}</td>
                    <td data-count="faults">
                      {active ? <span class="tag tag-failed">{active} active</span> : 'none'}
                    </td>
                    <td>{labOf(labs, n.name) ?? '—'}</td>
                  </tr>
                );
              })}
            </tbody>
          </table>
          {networks.length === 0 ? (
            <p class="empty">
              No networks. Make one with <code>hearth network create lab</code>, then put machines on it with{' '}
              <code>hearth machine run --network lab debian:bookworm</code>.
            </p>
          ) : null}
        </div>
      )}
    </section>
  );
}
