import { useState } from 'preact/hooks';
import { useLive, useTitle } from '../hooks';
import { EventTable, LiveBadge } from './common';

type Kind = 'all' | 'put' | 'delete';

export function Events() {
  useTitle('Events');
  const live = useLive();
  const [prefix, setPrefix] = useState('');
  const [kind, setKind] = useState<Kind>('all');
  const shown = live.events.filter((e) => e.key.startsWith(prefix) && (kind === 'all' || e.kind === kind));
  return (
    <section aria-labelledby="events-title">
      <div class="heading">
        <h1 id="events-title" tabIndex={-1}>
          Events
        </h1>
        <LiveBadge connection={live.connection} />
      </div>
      <p>
        Every change in the store as it happens, newest first: the {live.events.length} latest are kept here.
      </p>
      <form class="filters" role="search" aria-label="Filter events" onSubmit={(e) => e.preventDefault()}>
        <label>
          Key prefix
          <input
            type="search"
            name="prefix"
            value={prefix}
            placeholder="e.g. machines/"
            autocomplete="off"
            spellcheck={false}
            onInput={(e) => setPrefix((e.target as HTMLInputElement).value)}
          />
        </label>
        <label>
          Kind
          <select name="kind" value={kind} onChange={(e) => setKind((e.target as HTMLSelectElement).value as Kind)}>
            <option value="all">all</option>
            <option value="put">put</option>
            <option value="delete">delete</option>
          </select>
        </label>
      </form>
      <EventTable
        events={shown}
        caption={`${shown.length} events${prefix ? ` under ${prefix}` : ''}${kind !== 'all' ? `, ${kind} only` : ''}`}
      />
    </section>
  );
}
