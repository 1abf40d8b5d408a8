// Global search, in the header of every page: machines, apps, workflows,
// runs, networks and services by name, id or address. The live stream
// marks a list stale when it changes; stale lists are read when the box
// takes focus, and as they change while it has it, so pages where nobody
// searches read nothing. Matching happens here, as the user types. `/`
// focuses the box from anywhere.

import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { ApiError, api, seg, type Machine } from '../api';
import { live, touches } from '../live';
import { navigate } from '../nav';
import './search.css';

export interface Hit {
  kind: string;
  name: string;
  /** What else matched or tells two hits apart: an address, a workflow. */
  detail: string;
  href: string;
  /** Other words the hit is found by (addresses, ids). */
  also: string[];
}

interface Source {
  path: string;
  /** Store prefixes whose change makes the list stale. */
  prefixes: string[];
  hits: (body: any) => Hit[];
}

const SOURCES: Source[] = [
  {
    path: '/v1/machines',
    prefixes: ['machines/'],
    hits: (body: { machines: Machine[] }) =>
      body.machines.map((m) => ({
        kind: 'machine',
        name: m.name,
        detail: [m.state, ...m.nics.map((n) => n.ip)].join(' · '),
        href: `/ui/machines/${seg(m.name)}`,
        also: m.nics.flatMap((n) => [n.ip, n.dns_name]),
      })),
  },
  {
    path: '/v1/apps',
    prefixes: ['apps/records/'],
    hits: (body: { apps: { name: string; active: number; routes: string[] }[] }) =>
      body.apps.map((a) => ({
        kind: 'app',
        name: a.name,
        detail: `v${a.active}`,
        href: `/ui/apps/${seg(a.name)}`,
        also: a.routes,
      })),
  },
  {
    path: '/v1/workflows',
    prefixes: ['workflows/defs/'],
    hits: (body: { workflows: { name: string; active: number }[] }) =>
      body.workflows.map((w) => ({
        kind: 'workflow',
        name: w.name,
        detail: `v${w.active}`,
        href: '/ui/workflows',
        also: [],
      })),
  },
  {
    path: '/v1/runs',
    prefixes: ['workflows/runs/'],
    hits: (body: { runs: { id: string; workflow: string; status: string }[] }) =>
      body.runs.map((r) => ({
        kind: 'run',
        name: r.id,
        detail: `${r.workflow} · ${r.status}`,
        href: `/ui/runs/${seg(r.id)}`,
        also: [],
      })),
  },
  {
    path: '/v1/networks',
    prefixes: ['networks/'],
    hits: (body: { networks: { name: string; subnet: string }[] }) =>
      body.networks.map((n) => ({
        kind: 'network',
        name: n.name,
        detail: n.subnet,
        href: `/ui/networks/${seg(n.name)}`,
        also: [n.subnet],
      })),
  },
  {
    path: '/v1/services',
    prefixes: ['services/defs/'],
    hits: (body: { services: { name: string; kind: string }[] }) =>
      body.services.map((s) => ({
        kind: 'service',
        name: s.name,
        detail: s.kind,
        href: `/ui/services/${seg(s.name)}`,
        also: [],
      })),
  },
];

/** The most hits shown. */
const SHOWN = 12;

/** How well `hit` matches `query` (lower case): 0 exact, 1 prefix, 2
 * within, 3 by another word; null when it does not. */
function rank(hit: Hit, query: string): number | null {
  const name = hit.name.toLowerCase();
  if (name === query) return 0;
  if (name.startsWith(query)) return 1;
  if (name.includes(query)) return 2;
  if (hit.also.some((word) => word.toLowerCase().includes(query))) return 3;
  return null;
}

/** The hits for `query`, best first, then by kind and name. */
export function matches(hits: Hit[], query: string): Hit[] {
  const q = query.trim().toLowerCase();
  if (!q) return [];
  return hits
    .map((hit) => ({ hit, rank: rank(hit, q) }))
    .filter((h): h is { hit: Hit; rank: number } => h.rank !== null)
    .sort((a, b) => a.rank - b.rank || a.hit.name.length - b.hit.name.length || a.hit.name.localeCompare(b.hit.name))
    .slice(0, SHOWN)
    .map((h) => h.hit);
}

/** Every source's hits, read again when one of them changes. A source
 * that could not be read is tried again on the next `retry()` (the box's
 * next focus), not on every change in the store; a response that an
 * answer to a later read of its source overtook is dropped. */
function useIndex(active: boolean): { hits: Hit[]; failed: string[]; retry: () => void } {
  const [lists, setLists] = useState<Record<string, Hit[]>>({});
  const [failed, setFailed] = useState<string[]>([]);
  const stale = useRef(new Set(SOURCES.map((s) => s.path)));
  const failing = useRef(new Set<string>());
  /** The latest read of each source: only its answer is kept. */
  const sequence = useRef(new Map<string, number>());
  const read = () => {
    for (const source of SOURCES) {
      if (!stale.current.has(source.path) || failing.current.has(source.path)) continue;
      stale.current.delete(source.path);
      const mine = (sequence.current.get(source.path) ?? 0) + 1;
      sequence.current.set(source.path, mine);
      const latest = () => sequence.current.get(source.path) === mine;
      api<unknown>('GET', source.path)
        .then((body) => {
          if (!latest()) return;
          setLists((old) => ({ ...old, [source.path]: source.hits(body) }));
          setFailed((old) => old.filter((p) => p !== source.path));
        })
        .catch((error) => {
          if (!latest()) return;
          // One list that cannot be read leaves the others searchable;
          // it is read again on the next focus.
          failing.current.add(source.path);
          if (!(error instanceof ApiError) || error.status !== 404) {
            setFailed((old) => (old.includes(source.path) ? old : [...old, source.path]));
          }
        });
    }
  };
  const reader = useRef(read);
  reader.current = read;
  useEffect(() => {
    const unsubscribe = live.subscribe((update) => {
      for (const source of SOURCES) if (touches(update, source.prefixes)) stale.current.add(source.path);
      if (active) reader.current();
    });
    return unsubscribe;
  }, [active]);
  useEffect(() => {
    if (active) read();
  }, [active]);
  const retry = () => {
    for (const path of failing.current) stale.current.add(path);
    failing.current.clear();
    if (active) read();
  };
  const hits = useMemo(() => SOURCES.flatMap((s) => lists[s.path] ?? []), [lists]);
  return { hits, failed, retry };
}

export function Search() {
  const [query, setQuery] = useState('');
  const [open, setOpen] = useState(false);
  const [active, setActive] = useState(0);
  const [focused, setFocused] = useState(false);
  const input = useRef<HTMLInputElement>(null);
  const { hits, failed, retry } = useIndex(focused);
  const found = matches(hits, query);

  // `/` anywhere but in a field focuses the search.
  useEffect(() => {
    const onKey = (event: KeyboardEvent) => {
      if (event.key !== '/' || event.ctrlKey || event.metaKey || event.altKey) return;
      const target = event.target as HTMLElement | null;
      if (target?.closest('input, textarea, select, [contenteditable], .xterm')) return;
      event.preventDefault();
      input.current?.focus();
    };
    document.addEventListener('keydown', onKey);
    return () => document.removeEventListener('keydown', onKey);
  }, []);

  const go = (hit: Hit | undefined) => {
    if (!hit) return;
    setOpen(false);
    setQuery('');
    input.current?.blur();
    navigate(hit.href);
  };
  const onKeyDown = (event: KeyboardEvent) => {
    if (event.key === 'ArrowDown' || event.key === 'ArrowUp') {
      event.preventDefault();
      setOpen(true);
      if (found.length) {
        const step = event.key === 'ArrowDown' ? 1 : -1;
        setActive((i) => (i + step + found.length) % found.length);
      }
    } else if (event.key === 'Enter') {
      event.preventDefault();
      go(found[Math.min(active, found.length - 1)]);
    } else if (event.key === 'Escape') {
      setOpen(false);
    }
  };
  const showing = open && query.trim() !== '';
  const option = (i: number) => `search-hit-${i}`;
  return (
    <div class="search" role="search">
      <label class="visually-hidden" for="search">
        Search by name, id or address
      </label>
      <input
        id="search"
        ref={input}
        type="search"
        placeholder="Search  /"
        autocomplete="off"
        spellcheck={false}
        role="combobox"
        aria-expanded={showing}
        aria-controls="search-hits"
        aria-autocomplete="list"
        aria-activedescendant={showing && found.length ? option(Math.min(active, found.length - 1)) : undefined}
        value={query}
        onFocus={() => {
          setFocused(true);
          retry();
          setOpen(true);
        }}
        onBlur={() => {
          setFocused(false);
          setOpen(false);
        }}
        onInput={(e) => {
          setQuery((e.target as HTMLInputElement).value);
          setActive(0);
          setOpen(true);
        }}
        onKeyDown={onKeyDown}
      />
      {showing ? (
        <ul id="search-hits" class="search-hits" role="listbox" aria-label="Search results">
          {found.map((hit, i) => (
            <li
              key={`${hit.kind}:${hit.name}`}
              id={option(i)}
              role="option"
              aria-selected={i === Math.min(active, found.length - 1)}
              data-kind={hit.kind}
              data-name={hit.name}
              // Before the input's blur closes the list.
              onMouseDown={(e) => {
                e.preventDefault();
                go(hit);
              }}
            >
              <span class="search-kind">{hit.kind}</span> <span class="mono">{hit.name}</span>
              {hit.detail ? <span class="search-detail"> {hit.detail}</span> : null}
            </li>
          ))}
          {found.length === 0 ? (
            <li class="search-none" role="option" aria-selected={false} aria-disabled="true">
              Nothing named “{query.trim()}”.
              {failed.length ? ` (${failed.map((p) => p.replace('/v1/', '')).join(', ')} could not be read)` : ''}
            </li>
          ) : null}
        </ul>
      ) : null}
    </div>
  );
}
