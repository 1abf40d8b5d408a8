// The live view of the store: one `GET /v1/events?follow=true` stream for
// the whole dashboard (the daemon caps streams, so views share it), the
// latest events kept in memory, and a resume from the last revision seen
// after any break: a dropped connection, a daemon restart, or the stream's
// own end after its lifetime.

import { ApiError, api, asApiError, loadSession, type ChangeEvent } from './api';
import { setError } from './errors';

/** Events kept for the views, newest first. */
const KEEP = 500;
/** How many past events a fresh dashboard starts with. */
const BACKLOG = 100;
/** Reconnect delays: the first try is quick, then it backs off. */
const FIRST_RETRY_MS = 250;
const MAX_RETRY_MS = 5000;

export type Connection = 'connecting' | 'live' | 'reconnecting';

/** What a listener hears: new events, or `resync` after a break, when
 * whatever it shows may be stale and should be read again. */
export type Update = { events: ChangeEvent[] } | { resync: true };

type Listener = (update: Update) => void;

class Live {
  events: ChangeEvent[] = [];
  /** The newest revision an event was seen of. */
  revision = 0;
  /** The revision every event up to which has been seen: a transaction's
   * events share a revision, so a break may come between two of them. */
  private complete = 0;
  /** Keys seen at `revision`, so that a resume from `complete + 1` does not
   * show an event twice. */
  private seenKeys = new Set<string>();
  connection: Connection = 'connecting';
  private source: EventSource | null = null;
  private listeners = new Set<Listener>();
  private retryMs = FIRST_RETRY_MS;
  private started = false;

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(update: Update) {
    for (const listener of this.listeners) listener(update);
  }

  /** Reads the backlog, then follows from the revision after it. */
  async start() {
    if (this.started) return;
    this.started = true;
    await this.restart();
  }

  private async restart() {
    try {
      const list = await api<{ revision: number; events: ChangeEvent[] }>('GET', `/v1/events?limit=${BACKLOG}`);
      this.events = list.events.slice().reverse().slice(0, KEEP);
      this.revision = list.revision;
      this.complete = list.revision;
      this.seenKeys.clear();
      this.emit({ resync: true });
      this.connect();
    } catch (error) {
      setError(asApiError(error));
      this.retry();
    }
  }

  private connect() {
    this.source?.close();
    const source = new EventSource(`/v1/events?follow=true&since=${this.complete + 1}`);
    this.source = source;
    const take = (message: MessageEvent<string>) => this.take(message);
    source.addEventListener('put', take);
    source.addEventListener('delete', take);
    source.addEventListener('open', () => {
      const wasBroken = this.connection === 'reconnecting';
      this.setConnection('live');
      this.retryMs = FIRST_RETRY_MS;
      setError(null);
      // What happened during the break arrives as events; views that
      // read lists read them again all the same.
      if (wasBroken) this.emit({ resync: true });
    });
    source.addEventListener('error', (event) => {
      source.close();
      if (this.source !== source) return;
      const data = (event as MessageEvent<string>).data;
      if (typeof data === 'string' && data !== '') {
        // The daemon's own error event: history compacted past our
        // revision. Start over from a fresh backlog.
        this.report(data);
        void this.restart();
        return;
      }
      // A break, or the stream's end after its lifetime (its `end` event
      // has no data, so EventSource does not dispatch it): resume.
      this.retry();
      // Why did it break? The session may have been revoked, or the
      // daemon stopped: ask, and show the answer.
      loadSession().catch((error) => setError(asApiError(error)));
    });
  }

  private report(data: string) {
    try {
      const body = JSON.parse(data) as { error: { code: string; message: string; hint: string } };
      setError(new ApiError(0, body.error.code, body.error.message, body.error.hint));
    } catch {
      setError(new ApiError(0, 'stream_error', 'The event stream failed.', 'Reload the page.'));
    }
  }

  private retry() {
    this.setConnection('reconnecting');
    const delay = this.retryMs;
    this.retryMs = Math.min(this.retryMs * 2, MAX_RETRY_MS);
    window.setTimeout(() => {
      if (this.events.length === 0 && this.revision === 0) void this.restart();
      else this.connect();
    }, delay);
  }

  private take(message: MessageEvent<string>) {
    let event: ChangeEvent;
    try {
      event = JSON.parse(message.data) as ChangeEvent;
    } catch {
      return;
    }
    if (event.revision <= this.complete) return;
    if (event.revision === this.revision) {
      if (this.seenKeys.has(event.key)) return;
    } else {
      this.complete = Math.max(this.complete, this.revision);
      this.revision = event.revision;
      this.seenKeys.clear();
    }
    this.seenKeys.add(event.key);
    this.events.unshift(event);
    if (this.events.length > KEEP) this.events.length = KEEP;
    this.emit({ events: [event] });
  }

  private setConnection(connection: Connection) {
    if (this.connection === connection) return;
    this.connection = connection;
    this.emit({ events: [] });
  }
}

export const live = new Live();

/** Whether an update touches keys under any of `prefixes`. */
export function touches(update: Update, prefixes: string[]): boolean {
  if ('resync' in update) return true;
  return update.events.some((e) => prefixes.some((p) => e.key.startsWith(p)));
}
