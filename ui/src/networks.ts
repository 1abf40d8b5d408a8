// Networks and faults as the /v1 API gives them (crates/client/src/types/
// networks.rs), and what the Networks views share about them.

/** Store prefixes whose changes the networks views follow: the networks,
 * their address allocations, the faults, the machines on them, labs. */
export const NETWORK_PREFIXES = ['networks/', 'ipam/', 'faults/', 'machines/', 'labs/'];

export interface Network {
  name: string;
  subnet: string;
  gateway: string;
  bridge: string;
  nat: boolean;
  machines: { machine: string; ip: string }[];
  /** Unix seconds. */
  created_at: number;
}

export interface PartitionFault {
  machines: string[];
  from: string[];
  both_ways: boolean;
}

export interface DelayFault {
  machine: string;
  delay_ms: number;
  jitter_ms: number;
}

export interface LossFault {
  machine: string;
  percent: number;
}

export interface Fault {
  id: string;
  kind: 'partition' | 'delay' | 'loss';
  description: string;
  partition?: PartitionFault;
  delay?: DelayFault;
  loss?: LossFault;
  /** Unix seconds. */
  expires_at: number | null;
  created_at: number;
}

export interface Lab {
  name: string;
  networks: string[];
}

/** Every machine a fault involves. */
export function faultMachines(fault: Fault): string[] {
  if (fault.partition) return [...fault.partition.machines, ...fault.partition.from];
  if (fault.delay) return [fault.delay.machine];
  if (fault.loss) return [fault.loss.machine];
  return [];
}

/** Whether a fault touches any machine of `members`. */
export function faultOn(fault: Fault, members: Set<string>): boolean {
  return faultMachines(fault).some((m) => members.has(m));
}

/** Who a fault targets, for tables: `a ✕ b`, `a`. */
export function targets(fault: Fault): string {
  if (fault.partition) {
    const p = fault.partition;
    return `${p.machines.join(', ')} ${p.both_ways ? '✕' : '⇍'} ${p.from.join(', ')}`;
  }
  return faultMachines(fault).join(', ');
}

/** What a fault does, for badges and tables: `loss 30%`, `delay 200 ms ±20 ms`. */
export function parameters(fault: Fault): string {
  if (fault.partition) return fault.partition.both_ways ? 'both ways' : `one way: from ${fault.partition.from.join(', ')}`;
  if (fault.delay) {
    const d = fault.delay;
    return `delay ${d.delay_ms} ms${d.jitter_ms ? ` ±${d.jitter_ms} ms` : ''}`;
  }
  if (fault.loss) return `loss ${fault.loss.percent}%`;
  return fault.description;
}
