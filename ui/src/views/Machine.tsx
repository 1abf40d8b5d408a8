// One machine: its state and what it runs on, stop, start, restart and
// remove, a terminal into it, its snapshots, and its console log followed
// live.

import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, asApiError, seg, type Machine as MachineRecord } from '../api';
import { setError } from '../errors';
import { useLive, useResource, useTitle } from '../hooks';
import { type MachineAction, stateText, useMachineAction } from '../machines';
import { LiveBadge, ago } from './common';
import { MachineSnapshots } from './MachineSnapshots';
import { MachineTerminal } from './MachineTerminal';

/** Console characters kept on the page. */
const LOG_CHARS = 200_000;

/** Terminal control sequences (colours, cursor moves) and carriage
 * returns: the console is a serial terminal, the page is text. */
function plain(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\r/g, '');
}

type LogState = 'connecting' | 'live' | 'ended' | 'failed';

/** `GET /v1/machines/{name}/logs?follow=true`: plain text, streamed. */
function useConsole(name: string): { text: string; state: LogState } {
  const [text, setText] = useState('');
  const [state, setState] = useState<LogState>('connecting');
  useEffect(() => {
    const abort = new AbortController();
    let kept = '';
    (async () => {
      const response = await fetch(`/v1/machines/${seg(name)}/logs?follow=true&tail=500`, {
        signal: abort.signal,
        credentials: 'same-origin',
      });
      if (!response.ok || !response.body) throw new ApiError(response.status, 'http_error', 'The console log could not be read.', 'Reload the page.');
      setState('live');
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        kept = (kept + plain(value)).slice(-LOG_CHARS);
        setText(kept);
      }
      setState('ended');
    })().catch((error) => {
      if (!abort.signal.aborted) {
        setState('failed');
        setError(asApiError(error));
      }
    });
    return () => abort.abort();
  }, [name]);
  return { text, state };
}

const CONSOLE_STATE_TEXT: Record<LogState, string> = {
  connecting: 'Connecting…',
  live: 'Following',
  ended: 'Ended: the machine was removed, or the daemon stopped',
  failed: 'Failed: see the error above',
};

function Console({ name }: { name: string }) {
  const { text, state } = useConsole(name);
  const box = useRef<HTMLPreElement>(null);
  // Keep the newest lines in view, unless the reader scrolled up.
  useEffect(() => {
    const el = box.current;
    if (el && el.scrollHeight - el.scrollTop - el.clientHeight < 80) el.scrollTop = el.scrollHeight;
  }, [text]);
  return (
    <>
      <p class={`live live-${state === 'live' ? 'live' : 'connecting'}`} data-console-state={state}>
        {CONSOLE_STATE_TEXT[state]}
      </p>
      <pre class="console" id="console" ref={box} tabIndex={0} aria-label={`Console of ${name}`}>
        {text || 'Nothing on the console yet.'}
      </pre>
    </>
  );
}

function Actions({ machine, reload }: { machine: MachineRecord; reload: () => void }) {
  // This page has nothing left to show after a removal: go to the list,
  // as a link would (the shell follows history's popstate).
  const { busy, act } = useMachineAction(machine.name, reload, () => {
    history.pushState(null, '', '/ui/machines');
    dispatchEvent(new PopStateEvent('popstate'));
  });
  const running = machine.desired === 'running';
  const label = (action: MachineAction, idle: string, doing: string) => (busy === action ? doing : idle);
  return (
    <div class="actions">
      {running ? (
        <button type="button" disabled={busy !== null} onClick={() => act('stop')}>
          {label('stop', 'Stop', 'Stopping…')}
        </button>
      ) : (
        <button type="button" disabled={busy !== null} onClick={() => act('start')}>
          {label('start', 'Start', 'Starting…')}
        </button>
      )}
      {running ? (
        <button type="button" disabled={busy !== null} onClick={() => act('restart')}>
          {label('restart', 'Restart', 'Restarting…')}
        </button>
      ) : null}
      <button type="button" class="danger" disabled={busy !== null} onClick={() => act('remove')}>
        {label('remove', 'Remove', 'Removing…')}
      </button>
    </div>
  );
}

export function Machine({ name }: { name: string }) {
  useTitle(`Machine ${name}`);
  const live = useLive();
  const { data: machine, error, reload } = useResource<MachineRecord>(`/v1/machines/${seg(name)}`, [
    `machines/${name}`,
  ]);
  const state = machine ? stateText(machine) : undefined;
  return (
    <section aria-labelledby="machine-title">
      <p class="crumbs">
        <a href="/ui/machines">Machines</a> /
      </p>
      <div class="heading">
        <h1 id="machine-title" tabIndex={-1}>
          Machine <span class="mono">{name}</span>
        </h1>
        <LiveBadge connection={live.connection} />
      </div>
      {machine === null ? (
        error?.status === 404 ? (
          <p class="empty">
            There is no machine named <span class="mono">{name}</span>.{' '}
            <a href="/ui/machines">See the machines there are.</a>
          </p>
        ) : (
          <p aria-busy="true">Reading the machine…</p>
        )
      ) : (
        <>
          <dl class="facts">
            <dt>State</dt>
            <dd>
              <span class={`tag tag-${machine.state}`} data-state={machine.state}>
                {state}
              </span>
              {machine.reason && machine.state !== 'running' ? <div class="reason">{machine.reason}</div> : null}
            </dd>
            <dt>Image</dt>
            <dd class="mono">{machine.image}</dd>
            <dt>Backend</dt>
            <dd>
              {machine.backend}, {machine.cpus} CPU{machine.cpus === 1 ? '' : 's'}, {machine.memory_mib} MiB
              {machine.disk_mib ? `, ${machine.disk_mib} MiB disk` : ''}
            </dd>
            <dt>Addresses</dt>
            <dd class="mono">
              {machine.nics.length
                ? machine.nics.map((n) => (
                    <div key={n.ip}>
                      {n.ip} ({n.dns_name})
                    </div>
                  ))
                : '—'}
            </dd>
            <dt>Ports</dt>
            <dd class="mono">
              {machine.ports.length ? machine.ports.map((p) => <div key={p}>127.0.0.1:{p.replace(':', ' → ')}</div>) : '—'}
              {machine.ports_problem ? <div class="reason">{machine.ports_problem}</div> : null}
            </dd>
            <dt>Booted</dt>
            <dd>
              {machine.started_at ? ago(machine.started_at * 1000) : '—'}
              {machine.boot_ms ? `, in ${machine.boot_ms} ms` : ''}
              {machine.kernel ? `, kernel ${machine.kernel}` : ''}
            </dd>
          </dl>
          <h2>Actions</h2>
          <Actions machine={machine} reload={reload} />
          <h2>Terminal</h2>
          <MachineTerminal name={name} running={machine.state === 'running'} />
          <h2>Snapshots</h2>
          <MachineSnapshots machine={machine} />
          <h2>Console</h2>
          <Console name={name} />
        </>
      )}
    </section>
  );
}
