// What both machine views do: ask the daemon to start, stop, restart or
// remove a machine, and say its state in one phrase.

import { useState } from 'preact/hooks';
import { ApiError, api, asApiError, seg, type Machine } from './api';
import { setError } from './errors';

export type MachineAction = 'start' | 'stop' | 'restart' | 'remove';

/** How long a restart waits for the machine to stop. */
const STOP_MS = 60_000;

/** `starting: booting` while it is on its way, else its state. */
export function stateText(machine: Machine): string {
  return machine.phase && machine.state !== 'running' ? `${machine.state}: ${machine.phase}` : machine.state;
}

async function waitUntilStopped(name: string): Promise<void> {
  const deadline = Date.now() + STOP_MS;
  for (;;) {
    const machine = await api<Machine>('GET', `/v1/machines/${seg(name)}`);
    if (machine.state === 'stopped' || machine.state === 'failed') return;
    if (Date.now() > deadline) {
      throw new ApiError(0, 'timeout', `${name} did not stop within ${STOP_MS / 1000} s.`, 'Its console shows why; remove it to force it off.');
    }
    await new Promise((resolve) => window.setTimeout(resolve, 500));
  }
}

/** The action under way (or null), and how to start one: a removal is
 * confirmed first; a restart is a stop, then a start once it stopped (the
 * API has no restart). Errors go to the page's banner; `reload` runs after
 * each action, `removed` after a removal instead. */
export function useMachineAction(
  name: string,
  reload: () => void,
  removed: () => void = reload,
): { busy: MachineAction | null; act: (action: MachineAction) => Promise<void> } {
  const [busy, setBusy] = useState<MachineAction | null>(null);
  const act = async (action: MachineAction) => {
    if (action === 'remove' && !confirm(`Remove machine ${name}? Its disk goes with it.`)) return;
    setBusy(action);
    const path = `/v1/machines/${seg(name)}`;
    let done = reload;
    try {
      if (action === 'remove') {
        await api('DELETE', `${path}?force=true`);
        done = removed;
      } else if (action === 'restart') {
        await api('POST', `${path}/stop`);
        await waitUntilStopped(name);
        await api('POST', `${path}/start`);
      } else {
        await api('POST', `${path}/${action}`);
      }
      setError(null);
    } catch (error) {
      setError(asApiError(error));
    } finally {
      setBusy(null);
      done();
    }
  };
  return { busy, act };
}

/** `GET /v1/snapshots`: a machine saved to disk. */
export interface Snapshot {
  name: string;
  /** The machine it was taken from. */
  machine: string;
  image: string;
  backend: string;
  cpus: number;
  memory_mib: number;
  size_bytes: number;
  /** Unix seconds. */
  created_at: number;
}

/** Snapshot and machine names: lowercase letters, digits and dashes. */
export const NAME_PATTERN = '[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?';

/** `NAME-YYYYMMDD-HHMMSS` (UTC), within the 63 characters a name may have. */
export function snapshotName(machine: string, at: Date = new Date()): string {
  const stamp = at.toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
  return `${machine.slice(0, 63 - stamp.length - 1).replace(/-+$/, '')}-${stamp}`;
}

/** Pauses a running machine to disk; it is stopped afterwards. */
export function takeSnapshot(machine: string, name: string): Promise<Snapshot> {
  return api<Snapshot>('POST', `/v1/machines/${seg(machine)}/snapshot`, { name });
}

/** A new machine from a snapshot, resumed where the snapshot was taken. */
export function restoreSnapshot(snapshot: string, name: string): Promise<Machine> {
  return api<Machine>('POST', `/v1/snapshots/${seg(snapshot)}/restore`, { name });
}

export function deleteSnapshot(snapshot: string): Promise<void> {
  return api<void>('DELETE', `/v1/snapshots/${seg(snapshot)}`);
}
