// One network drawn: its bridge in the middle, its machines around it, a
// link from each to the bridge, and every active fault on the link it
// breaks. A machine selected in the drawing gets a panel to break its
// links on purpose (partition, loss, delay) and to heal them.

import { useEffect, useState } from 'preact/hooks';
import { api, seg, type Machine } from '../api';
import { useAction, useLive, useResource, useTitle } from '../hooks';
import { stateText } from '../machines';
import {
  NETWORK_PREFIXES,
  faultMachines,
  faultOn,
  parameters,
  targets,
  type Fault,
  type Lab,
  type Network as NetworkInfo,
} from '../networks';
import { ErrorNote, LiveBadge, ago } from './common';
import { labOf } from './Networks';
import './networks.css';

/** The drawing's frame: its size, where the bridge is, and where each of
 * `n` machines goes. Wide, machines sit on an ellipse around the bridge
 * (two: level with it, partitions bowing above); narrow (a phone), the
 * drawing is as narrow as the screen, so its words stay readable: two
 * machines side by side above the bridge, more on a tall ellipse. */
interface Geo {
  w: number;
  h: number;
  cx: number;
  cy: number;
  at: (i: number, n: number) => { x: number; y: number };
}

function frame(n: number, narrow: boolean): Geo {
  if (!narrow) {
    const cx = 340;
    const cy = n <= 2 ? 240 : 270;
    return {
      w: 680,
      h: n <= 2 ? 340 : 500,
      cx,
      cy,
      at: (i, n) => {
        const angle = Math.PI + (2 * Math.PI * i) / Math.max(n, 1);
        return { x: cx + 235 * Math.cos(angle), y: cy + 165 * Math.sin(angle) };
      },
    };
  }
  if (n <= 2) {
    return {
      w: 360,
      h: 420,
      cx: 180,
      cy: 330,
      at: (i, n) => ({ x: n === 1 ? 180 : i === 0 ? 95 : 265, y: 170 }),
    };
  }
  return {
    w: 360,
    h: 560,
    cx: 180,
    cy: 290,
    at: (i, n) => {
      const angle = -Math.PI / 2 + (2 * Math.PI * i) / n;
      return { x: 180 + 100 * Math.cos(angle), y: 290 + 200 * Math.sin(angle) };
    },
  };
}

/** Whether the screen is a phone's, followed as it changes. */
function useNarrow(): boolean {
  const query = '(max-width: 600px)';
  const [narrow, setNarrow] = useState(() => matchMedia(query).matches);
  useEffect(() => {
    const media = matchMedia(query);
    const change = () => setNarrow(media.matches);
    change();
    media.addEventListener('change', change);
    return () => media.removeEventListener('change', change);
  }, []);
  return narrow;
}

const NODE_W = 140;
const NODE_H = 62;

interface Node {
  name: string;
  ip: string;
  state: string;
  stateClass: string;
  x: number;
  y: number;
}

/** Machines around the bridge, on an ellipse, the first on the left. */
function layout(network: NetworkInfo, machines: Map<string, Machine>, geo: Geo): Node[] {
  const members = network.machines.slice().sort((a, b) => a.machine.localeCompare(b.machine));
  const n = members.length;
  return members.map((m, i) => {
    const record = machines.get(m.machine);
    return {
      name: m.machine,
      ip: m.ip,
      state: record ? stateText(record) : 'unknown',
      stateClass: record?.state ?? 'unknown',
      ...geo.at(i, n),
    };
  });
}

/** A rough width of a label in the drawing's 13 px font. */
function textWidth(text: string): number {
  return text.length * 7.4 + 14;
}

function Badge({ x, y, text, kind, machine, id }: { x: number; y: number; text: string; kind: string; machine: string; id: string }) {
  const w = textWidth(text);
  return (
    <g class={`net-badge net-badge-${kind}`} data-fault={kind} data-machine={machine} data-fault-id={id}>
      <rect x={x - w / 2} y={y - 11} width={w} height={22} rx={11} />
      <text x={x} y={y + 4.5} text-anchor="middle">
        {text}
      </text>
    </g>
  );
}

/** A partition between two machines drawn: a dashed arc, bowed away from
 * the bridge, with a cross and a label at its middle. */
function Cut({ a, b, fault, index, geo }: { a: Node; b: Node; fault: Fault; index: number; geo: Geo }) {
  const { cx: CX, cy } = geo;
  const mx = (a.x + b.x) / 2;
  const my = (a.y + b.y) / 2;
  // The normal of a→b that points away from the bridge (upwards when the
  // two face each other across it).
  let nx = -(b.y - a.y);
  let ny = b.x - a.x;
  const length = Math.hypot(nx, ny) || 1;
  nx /= length;
  ny /= length;
  if ((mx - CX) * nx + (my - cy) * ny < 0 || (Math.abs(mx - CX) < 1 && Math.abs(my - cy) < 1 && ny > 0)) {
    nx = -nx;
    ny = -ny;
  }
  const bow = 150 + index * 44;
  const qx = mx + nx * bow;
  const qy = my + ny * bow;
  // The curve's middle.
  const px = 0.25 * a.x + 0.5 * qx + 0.25 * b.x;
  const py = 0.25 * a.y + 0.5 * qy + 0.25 * b.y;
  const label = fault.partition?.both_ways ? 'partitioned' : `partitioned: ${fault.partition?.from.join(', ')} ⇏`;
  const w = textWidth(label);
  const between = [a.name, b.name].sort().join(' ');
  return (
    <g class="net-cut" data-fault="partition" data-between={between} data-fault-id={fault.id}>
      <title>{`${fault.description} (${fault.id})`}</title>
      <path d={`M ${a.x} ${a.y} Q ${qx} ${qy} ${b.x} ${b.y}`} />
      <g class="net-cross" transform={`translate(${px} ${py})`}>
        <circle r={12} />
        <path d="M -6 -6 L 6 6 M 6 -6 L -6 6" />
      </g>
      <rect class="net-cut-label" x={px - w / 2} y={py - 36} width={w} height={20} rx={4} />
      <text x={px} y={py - 21.5} text-anchor="middle">
        {label}
      </text>
    </g>
  );
}

function Drawing({
  network,
  nodes,
  geo,
  faults,
  selected,
  select,
}: {
  network: NetworkInfo;
  nodes: Node[];
  geo: Geo;
  faults: Fault[];
  selected: string | null;
  select: (name: string | null) => void;
}) {
  const { cx: CX, cy } = geo;
  const byName = new Map(nodes.map((n) => [n.name, n]));
  const cuts: preact.JSX.Element[] = [];
  const badges: preact.JSX.Element[] = [];
  const perMachine = new Map<string, number>();
  // `key` tells apart a fault's badges on one machine (a partition's two sides).
  const badge = (machine: string, text: string, kind: string, id: string, key = '') => {
    const node = byName.get(machine);
    if (!node) return;
    const k = perMachine.get(machine) ?? 0;
    perMachine.set(machine, k + 1);
    const x = node.x + (CX - node.x) * 0.5;
    const y = node.y + (cy - node.y) * 0.5 + 26 * k;
    badges.push(<Badge key={`${id}-${machine}-${key}`} x={x} y={y} text={text} kind={kind} machine={machine} id={id} />);
  };
  let pairs = 0;
  for (const fault of faults) {
    if (fault.partition) {
      const { machines, from, both_ways } = fault.partition;
      // A machine here cut from machines on another network: one badge on
      // its link, naming them all, and which way traffic is cut.
      const away = new Map<string, { side: 'to' | 'from'; names: string[] }>();
      const far = (here: string, side: 'to' | 'from', name: string) => {
        const key = `${here}\n${side}`;
        const entry = away.get(key) ?? { side, names: [] };
        if (!entry.names.includes(name)) entry.names.push(name);
        away.set(key, entry);
      };
      for (const to of machines) {
        for (const source of from) {
          const a = byName.get(to);
          const b = byName.get(source);
          if (a && b) {
            cuts.push(<Cut key={`${fault.id}-${to}-${source}`} a={a} b={b} fault={fault} index={pairs++} geo={geo} />);
          } else if (a) {
            far(to, 'to', source); // traffic from `source` to here is dropped
          } else if (b) {
            far(source, 'from', to); // traffic from here to `to` is dropped
          }
        }
      }
      for (const [key, { side, names }] of away) {
        const here = key.split('\n')[0];
        const text = both_ways
          ? `cut from ${names.join(', ')}`
          : side === 'to'
            ? `cut one way: nothing from ${names.join(', ')}`
            : `cut one way: nothing to ${names.join(', ')}`;
        badge(here, text, 'partition', fault.id, side);
      }
    } else {
      for (const machine of faultMachines(fault)) badge(machine, parameters(fault), fault.kind, fault.id);
    }
  }
  const broken = new Set(faults.flatMap(faultMachines));
  const summary =
    `Network ${network.name}: bridge ${network.bridge}, ${nodes.length} machines, ` +
    `${faults.length} active ${faults.length === 1 ? 'fault' : 'faults'}`;
  return (
    <svg
      class="net-drawing"
      viewBox={`0 0 ${geo.w} ${geo.h}`}
      role="group"
      aria-label={summary}
      data-network={network.name}
      onClick={(e) => {
        if (e.target === e.currentTarget) select(null);
      }}
    >
      {nodes.map((n) => (
        <line
          key={`link-${n.name}`}
          class={`net-link${broken.has(n.name) ? ' net-link-faulty' : ''}`}
          data-link={n.name}
          x1={n.x}
          y1={n.y}
          x2={CX}
          y2={cy}
        />
      ))}
      <g class="net-switch" data-switch={network.name}>
        <rect x={CX - 85} y={cy - 30} width={170} height={60} rx={8} />
        <text x={CX} y={cy - 9} text-anchor="middle" class="net-strong">
          {network.name} ({network.bridge})
        </text>
        <text x={CX} y={cy + 8} text-anchor="middle">
          {network.subnet}
        </text>
        <text x={CX} y={cy + 23} text-anchor="middle" class="net-muted">
          gw {network.gateway}
          {network.nat ? ', NAT' : ''}
        </text>
      </g>
      {cuts}
      {badges}
      {nodes.map((n) => {
        const on = selected === n.name;
        const toggle = () => select(on ? null : n.name);
        // The button is the box; its words are drawn over it, out of the
        // way of clicks and hidden from assistive technology, which hears
        // them in the button's name.
        const words = (
          <g
            key={`words-${n.name}`}
            class="net-node-words"
            aria-hidden="true"
            transform={`translate(${n.x - NODE_W / 2} ${n.y - NODE_H / 2})`}
          >
            <text x={NODE_W / 2} y={19} text-anchor="middle" class="net-strong">
              {n.name}
            </text>
            <text x={NODE_W / 2} y={36} text-anchor="middle" class="mono">
              {n.ip}
            </text>
            <circle cx={NODE_W / 2 - textWidth(n.state) / 2 + 2} cy={48.5} r={4} class={`net-dot net-state-${n.stateClass}`} />
            <text x={NODE_W / 2 + 6} y={53} text-anchor="middle" class={`net-state net-state-${n.stateClass}`}>
              {n.state}
            </text>
          </g>
        );
        return [
          <g
            key={`node-${n.name}`}
            class={`net-node${on ? ' net-node-selected' : ''}`}
            data-machine-node={n.name}
            role="button"
            // Lowercase: on SVG, Preact sets attributes, which are case-sensitive.
            tabindex={0}
            aria-pressed={on}
            aria-label={`Machine ${n.name}, ${n.ip}, ${n.state}`}
            transform={`translate(${n.x - NODE_W / 2} ${n.y - NODE_H / 2})`}
            onClick={toggle}
            onKeyDown={(e) => {
              if (e.key === 'Enter' || e.key === ' ') {
                e.preventDefault();
                toggle();
              } else if (e.key === 'Escape') {
                select(null);
              }
            }}
          >
            <rect width={NODE_W} height={NODE_H} rx={8} />
          </g>,
          words,
        ];
      })}
    </svg>
  );
}

/** The actions on the selected machine's links. */
function Panel({
  machine,
  others,
  faults,
  heal,
}: {
  machine: string;
  others: string[];
  faults: Fault[];
  heal: (fault: Fault) => Promise<void>;
}) {
  const [from, setFrom] = useState<string[]>([]);
  const [bothWays, setBothWays] = useState(true);
  const [loss, setLoss] = useState('30');
  const [delay, setDelay] = useState('200');
  const [jitter, setJitter] = useState('20');
  const action = useAction();
  const busy = action.running;
  const touching = faults.filter((f) => faultMachines(f).includes(machine));

  const inject = (what: string, body: unknown) =>
    action.run(
      async () => {
        await api('POST', '/v1/faults', body);
        if (what === 'partition') setFrom([]);
      },
      { what },
    );
  const healOne = (fault: Fault) => action.run(() => heal(fault), { what: `heal-${fault.id}` });

  return (
    <section class="net-panel" id="fault-panel" aria-labelledby="fault-panel-title" data-selected={machine}>
      <h2 id="fault-panel-title">
        Break <span class="mono">{machine}</span>'s links
      </h2>
      <ErrorNote error={action.error} />
      <form
        onSubmit={(e) => {
          e.preventDefault();
          void inject('partition', { partition: { machines: [machine], from, both_ways: bothWays } });
        }}
      >
        <fieldset>
          <legend>Partition from…</legend>
          {others.length === 0 ? <p class="net-muted-text">No other machine on this network.</p> : null}
          {others.map((o) => (
            <label key={o} class="net-check">
              <input
                type="checkbox"
                name="from"
                value={o}
                checked={from.includes(o)}
                onChange={(e) =>
                  setFrom((e.currentTarget as HTMLInputElement).checked ? [...from, o] : from.filter((x) => x !== o))
                }
              />
              <span class="mono">{o}</span>
            </label>
          ))}
          <label class="net-check">
            <input
              type="checkbox"
              checked={bothWays}
              onChange={(e) => setBothWays((e.currentTarget as HTMLInputElement).checked)}
            />
            Both ways
          </label>
          <button type="submit" class="danger" disabled={busy !== null || from.length === 0}>
            {busy === 'partition' ? 'Partitioning…' : 'Partition'}
          </button>
        </fieldset>
      </form>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          void inject('loss', { loss: { machine, percent: Number(loss) } });
        }}
      >
        <fieldset>
          <legend>Packet loss towards {machine}</legend>
          <label>
            Loss %{' '}
            <input
              type="number"
              min={0}
              max={100}
              step="any"
              required
              value={loss}
              onInput={(e) => setLoss((e.currentTarget as HTMLInputElement).value)}
            />
          </label>
          <button type="submit" disabled={busy !== null}>
            {busy === 'loss' ? 'Adding…' : 'Add loss'}
          </button>
        </fieldset>
      </form>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          void inject('delay', { delay: { machine, delay_ms: Number(delay), jitter_ms: Number(jitter) } });
        }}
      >
        <fieldset>
          <legend>Delay towards {machine}</legend>
          <label>
            Delay ms{' '}
            <input
              type="number"
              min={0}
              max={60000}
              required
              value={delay}
              onInput={(e) => setDelay((e.currentTarget as HTMLInputElement).value)}
            />
          </label>
          <label>
            Jitter ms{' '}
            <input
              type="number"
              min={0}
              required
              value={jitter}
              onInput={(e) => setJitter((e.currentTarget as HTMLInputElement).value)}
            />
          </label>
          <button type="submit" disabled={busy !== null}>
            {busy === 'delay' ? 'Adding…' : 'Add delay'}
          </button>
        </fieldset>
      </form>
      <h3>Faults touching {machine}</h3>
      {touching.length === 0 ? (
        <p class="net-muted-text">None: its links are whole.</p>
      ) : (
        <ul class="net-heal-list">
          {touching.map((f) => (
            <li key={f.id}>
              <span>
                {f.kind === 'partition' ? `partition ${targets(f)}` : parameters(f)}
              </span>
              <button
                type="button"
                disabled={busy !== null}
                onClick={() => void healOne(f)}
                aria-label={`Heal ${f.description}`}
              >
                {busy === `heal-${f.id}` ? 'Healing…' : 'Heal'}
              </button>
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

function FaultTable({
  faults,
  loaded,
  heal,
}: {
  faults: Fault[];
  /** Whether `GET /v1/faults` was read: until then, no fault is not "none". */
  loaded: boolean;
  heal: (fault: Fault) => Promise<void>;
}) {
  const action = useAction();
  const busy = action.running;
  const run = (what: string, work: () => Promise<void>) => action.run(work, { what });
  return (
    <section aria-labelledby="faults-title">
      <div class="heading">
        <h2 id="faults-title">Active faults</h2>
        {faults.length > 1 ? (
          <button
            type="button"
            class="danger"
            disabled={busy !== null}
            onClick={() => void run('all', async () => void (await Promise.all(faults.map(heal))))}
          >
            {busy === 'all' ? 'Healing…' : 'Heal all'}
          </button>
        ) : null}
      </div>
      <ErrorNote error={action.error} />
      <div class="scroll" role="region" aria-label="Active faults" tabIndex={0}>
        <table id="faults">
          <caption>Faults breaking this network's links now</caption>
          <thead>
            <tr>
              <th scope="col">Kind</th>
              <th scope="col">Targets</th>
              <th scope="col">Parameters</th>
              <th scope="col">Since</th>
              <th scope="col">Heals</th>
              <th scope="col">Actions</th>
            </tr>
          </thead>
          <tbody>
            {faults.map((f) => (
              <tr key={f.id} data-fault-id={f.id} data-fault-kind={f.kind}>
                <th scope="row">
                  <span class="tag tag-failed">{f.kind}</span>
                </th>
                <td class="mono">{targets(f)}</td>
                <td>{parameters(f)}</td>
                <td>{ago(f.created_at * 1000)}</td>
                <td>{f.expires_at ? `by itself at ${new Date(f.expires_at * 1000).toLocaleTimeString()}` : 'when healed'}</td>
                <td class="actions">
                  <button
                    type="button"
                    disabled={busy !== null}
                    onClick={() => void run(f.id, () => heal(f))}
                    aria-label={`Heal ${f.description}`}
                  >
                    {busy === f.id ? 'Healing…' : 'Heal'}
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
        {!loaded ? (
          <p class="empty" aria-busy="true" data-faults="loading">
            Reading the faults…
          </p>
        ) : faults.length === 0 ? (
          <p class="empty" data-faults="none">
            No active faults: every link is whole. Select a machine in the drawing to break one.
          </p>
        ) : null}
      </div>
    </section>
  );
}

export function Network({ name }: { name: string }) {
  useTitle(`Network ${name}`);
  const live = useLive();
  const [selected, setSelected] = useState<string | null>(null);
  const network = useResource<NetworkInfo>(`/v1/networks/${seg(name)}`, NETWORK_PREFIXES);
  const faultList = useResource<{ faults: Fault[] }>('/v1/faults', ['faults/', 'machines/']);
  const machineList = useResource<{ machines: Machine[] }>('/v1/machines', ['machines/']);
  const labs = useResource<{ labs: Lab[] }>('/v1/labs', ['labs/']).data?.labs;
  const info = network.data;
  const machines = new Map((machineList.data?.machines ?? []).map((m) => [m.name, m]));
  const members = new Set(info?.machines.map((m) => m.machine) ?? []);
  const faults = (faultList.data?.faults ?? [])
    .filter((f) => faultOn(f, members))
    .sort((x, y) => x.created_at - y.created_at || x.id.localeCompare(y.id));
  const geo = frame(info?.machines.length ?? 0, useNarrow());
  const nodes = info ? layout(info, machines, geo) : [];
  const current = selected !== null && members.has(selected) ? selected : null;
  const lab = labOf(labs, name);
  const heal = async (fault: Fault) => {
    await api('DELETE', `/v1/faults/${seg(fault.id)}`);
  };

  return (
    <section aria-labelledby="network-title">
      <p class="crumbs">
        <a href="/ui/networks">Networks</a> /
      </p>
      <div class="heading">
        <h1 id="network-title" tabIndex={-1}>
          Network <span class="mono">{name}</span>
        </h1>
        <LiveBadge connection={live.connection} />
      </div>
      {info === null ? (
        network.error ? (
          <ErrorNote error={network.error} />
        ) : (
          <p aria-busy="true">Reading the network…</p>
        )
      ) : (
        <>
          <p class="net-facts">
            Subnet <span class="mono">{info.subnet}</span>, gateway <span class="mono">{info.gateway}</span>,{' '}
            {info.nat ? 'NAT to the outside' : 'no NAT'}, bridge <span class="mono">{info.bridge}</span>, names{' '}
            <span class="mono">MACHINE.{info.name}.hearth</span>
            {lab ? (
              <>
                , made by lab <span class="mono">{lab}</span>
              </>
            ) : null}
            .
          </p>
          <div class="net-layout">
            <div class="net-figure">
              <Drawing network={info} nodes={nodes} geo={geo} faults={faults} selected={current} select={setSelected} />
              <p class="net-muted-text">
                {nodes.length === 0
                  ? 'No machines on this network yet: run one with --network ' + info.name + '.'
                  : 'Select a machine (click, or Tab to it and press Enter) to break or heal its links.'}
              </p>
            </div>
            {current !== null ? (
              <Panel
                key={current}
                machine={current}
                others={nodes.map((n) => n.name).filter((n) => n !== current)}
                faults={faults}
                heal={heal}
              />
            ) : null}
          </div>
          <FaultTable faults={faults} loaded={faultList.data !== null} heal={heal} />
        </>
      )}
    </section>
  );
}
