import { seg, type Machine } from '../api';
import { useLive, useResource, useTitle } from '../hooks';
import { stateText, useMachineAction } from '../machines';
import { LiveBadge } from './common';
import { NewMachine } from './NewMachine';

function addresses(machine: Machine): string {
  const parts = machine.nics.map((n) => `${n.ip} (${n.dns_name})`);
  for (const port of machine.ports) parts.push(`127.0.0.1:${port.split(':')[0]} → ${port.split(':')[1] ?? ''}`);
  return parts.length ? parts.join(', ') : '—';
}

function Row({ machine, reload }: { machine: Machine; reload: () => void }) {
  const { busy, act } = useMachineAction(machine.name, reload);
  const running = machine.desired === 'running';
  const state = stateText(machine);
  return (
    <tr data-machine={machine.name}>
      <th scope="row" class="mono">
        <a href={`/ui/machines/${seg(machine.name)}`}>{machine.name}</a>
      </th>
      <td>
        <span class={`tag tag-${machine.state}`}>{state}</span>
        {machine.reason && machine.state !== 'running' ? <div class="reason">{machine.reason}</div> : null}
      </td>
      <td class="mono">{machine.image}</td>
      <td class="mono">{addresses(machine)}</td>
      <td>{machine.backend}</td>
      <td class="actions">
        {running ? (
          <button type="button" disabled={busy !== null} onClick={() => act('stop')} aria-label={`Stop ${machine.name}`}>
            {busy === 'stop' ? 'Stopping…' : 'Stop'}
          </button>
        ) : (
          <button
            type="button"
            disabled={busy !== null}
            onClick={() => act('start')}
            aria-label={`Start ${machine.name}`}
          >
            {busy === 'start' ? 'Starting…' : 'Start'}
          </button>
        )}
        <button
          type="button"
          class="danger"
          disabled={busy !== null}
          onClick={() => act('remove')}
          aria-label={`Remove ${machine.name}`}
        >
          {busy === 'remove' ? 'Removing…' : 'Remove'}
        </button>
      </td>
    </tr>
  );
}

export function Machines() {
  useTitle('Machines');
  const live = useLive();
  const { data, reload } = useResource<{ machines: Machine[] }>('/v1/machines', ['machines/']);
  const machines = data?.machines ?? null;
  return (
    <section aria-labelledby="machines-title">
      <div class="heading">
        <h1 id="machines-title" tabIndex={-1}>
          Machines
        </h1>
        <LiveBadge connection={live.connection} />
      </div>
      {machines === null ? (
        <p aria-busy="true">Reading machines…</p>
      ) : (
        <div class="scroll" role="region" aria-label="Machines" tabIndex={0}>
          <table id="machines">
            <caption>Machines and what they are doing now</caption>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">State</th>
                <th scope="col">Image</th>
                <th scope="col">Addresses</th>
                <th scope="col">Backend</th>
                <th scope="col">Actions</th>
              </tr>
            </thead>
            <tbody>
              {machines.map((m) => (
                <Row key={m.name} machine={m} reload={reload} />
              ))}
            </tbody>
          </table>
          {machines.length === 0 ? (
            <p class="empty">
              No machines. Start one with <code>hearth machine run debian:bookworm</code>.
            </p>
          ) : null}
        </div>
      )}
      <details class="create" id="create-machine">
        <summary>Create a machine</summary>
        <NewMachine />
      </details>
    </section>
  );
}
