import type { ApiError, ChangeEvent } from '../api';
import type { Connection } from '../live';

const CONNECTION_TEXT: Record<Connection, string> = {
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
};

/** Whether the view is following the store right now. */
export function LiveBadge({ connection }: { connection: Connection }) {
  return (
    <p class={`live live-${connection}`} role="status" data-connection={connection}>
      {CONNECTION_TEXT[connection]}
    </p>
  );
}

/** A value as one short line. */
function shown(event: ChangeEvent): string {
  if (event.kind === 'delete') return '—';
  if (event.encoding === 'base64') return `${event.value?.length ?? 0} bytes (base64)`;
  const value = event.value ?? '';
  return value.length > 120 ? `${value.slice(0, 119)}…` : value;
}

/** Store events, newest first. The region scrolls sideways on a phone, so
 * it takes focus for keyboard users. */
export function EventTable({ events, caption }: { events: ChangeEvent[]; caption: string }) {
  return (
    <div class="scroll" role="region" aria-label={caption} tabIndex={0}>
      <table>
        <caption>{caption}</caption>
        <thead>
          <tr>
            <th scope="col">Revision</th>
            <th scope="col">Kind</th>
            <th scope="col">Key</th>
            <th scope="col">Value</th>
          </tr>
        </thead>
        <tbody>
          {events.map((e) => (
            <tr key={`${e.revision}:${e.key}`} data-key={e.key}>
              <td class="num">{e.revision}</td>
              <td>
                <span class={`tag tag-${e.kind}`}>{e.kind}</span>
              </td>
              <td class="mono">{e.key}</td>
              <td class="mono value">{shown(e)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {events.length === 0 ? <p class="empty">No events yet.</p> : null}
    </div>
  );
}

/** `5 s ago`, `3 min ago`, from Unix milliseconds. */
export function ago(ms: number): string {
  const secs = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (secs < 60) return `${secs} s ago`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min ago`;
  if (secs < 86400) return `${Math.floor(secs / 3600)} h ago`;
  return `${Math.floor(secs / 86400)} d ago`;
}

/** Addresses as links, one a line, or a dash for none. */
export function Links({ urls }: { urls: string[] }) {
  if (!urls.length) return <>—</>;
  return (
    <>
      {urls.map((url) => (
        <div key={url}>
          <a href={url}>{url}</a>
        </div>
      ))}
    </>
  );
}

/** A list of words, or a dash for none. */
export function list(items: string[]): string {
  return items.length ? items.join(', ') : '—';
}

/** An error told where it happened (a form, a panel), with its hint. */
export function ErrorNote({ error }: { error: ApiError | null }) {
  if (!error) return null;
  return (
    <div class="note note-error" role="alert">
      <p>
        <strong>{error.message}</strong>
        {error.code && error.code !== 'unreachable' ? <span class="code"> ({error.code})</span> : null}
      </p>
      {error.hint ? <p>{error.hint}</p> : null}
    </div>
  );
}

type Unit = 'KiB' | 'MiB' | 'GiB';
const UNITS: Unit[] = ['KiB', 'MiB', 'GiB'];

/** `12.3 KiB`, `1.5 GiB` from bytes: in the largest unit it is at least
 * one of, or in `unit`; with `digits` after the point (1). */
export function bytes(n: number, { unit, digits = 1 }: { unit?: Unit; digits?: number } = {}): string {
  if (!unit && n < 1024) return `${n} B`;
  const power = unit ? UNITS.indexOf(unit) + 1 : Math.min(UNITS.length, Math.floor(Math.log2(Math.max(n, 1)) / 10));
  return `${(n / 1024 ** power).toFixed(digits)} ${UNITS[power - 1]}`;
}

/** `45 s`, `12 min`, `3 h 12 min`, `2 d 5 h` from milliseconds. */
export function duration(ms: number): string {
  const secs = Math.max(0, Math.floor(ms / 1000));
  if (secs < 60) return `${secs} s`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min`;
  if (secs < 86400) return `${Math.floor(secs / 3600)} h ${Math.floor((secs % 3600) / 60)} min`;
  return `${Math.floor(secs / 86400)} d ${Math.floor((secs % 86400) / 3600)} h`;
}

/** A time of day from Unix milliseconds, with seconds: `10:42:07`. */
export function clock(ms: number): string {
  return new Date(ms).toLocaleTimeString(undefined, { hour12: false });
}
