// A terminal into a running machine, on its page. xterm.js is loaded
// only when a terminal is opened (../terminal.ts, its own chunk).

import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError } from '../api';
import { setError } from '../errors';
import type { Ended, Session } from '../terminal';

type State = 'closed' | 'loading' | 'connecting' | 'open' | 'ended';

const STATE_TEXT: Record<State, string> = {
  closed: '',
  loading: 'Loading the terminal…',
  connecting: 'Connecting…',
  open: 'Connected: the machine’s shell',
  ended: '',
};

/** Said next to the terminal and in its input's label: the way out of it
 * by keyboard, since xterm takes Tab and Escape for the shell. */
const LEAVE_HINT = 'Ctrl+] leaves the terminal';

export function MachineTerminal({ name, running }: { name: string; running: boolean }) {
  const [state, setState] = useState<State>('closed');
  const [end, setEnd] = useState<Ended | null>(null);
  const [size, setSize] = useState<{ rows: number; cols: number } | null>(null);
  const screen = useRef<HTMLDivElement>(null);
  const session = useRef<Session | null>(null);
  const opener = useRef<HTMLButtonElement>(null);
  const closer = useRef<HTMLButtonElement>(null);
  const refocus = useRef(false);
  // Bumped by close() and by each open(): an open() that finds another
  // number after an await was overtaken, and keeps nothing it made.
  const generation = useRef(0);
  // After Close, the keyboard goes back to the button that opens one.
  useEffect(() => {
    if (state === 'closed' && refocus.current) {
      refocus.current = false;
      opener.current?.focus();
    }
  }, [state]);

  const close = () => {
    generation.current += 1;
    session.current?.dispose();
    session.current = null;
    setState('closed');
    setEnd(null);
    setSize(null);
  };
  // Leaving the page ends the session.
  useEffect(() => close, [name]);

  const open = async () => {
    const mine = ++generation.current;
    const current = () => generation.current === mine;
    session.current?.dispose();
    session.current = null;
    setEnd(null);
    setState('loading');
    let module: typeof import('../terminal');
    try {
      module = await import('../terminal');
    } catch {
      if (!current()) return;
      setState('closed');
      setError(
        new ApiError(0, 'unreachable', 'The terminal could not be loaded.', 'Is `hearth serve` still running? Reload the page.'),
      );
      return;
    }
    if (!current()) return;
    // The screen is shown from the render after `loading`: it has its size.
    await new Promise((resolve) => requestAnimationFrame(resolve));
    const container = screen.current;
    if (!current() || !container) return;
    setState('connecting');
    const opened = module.openTerminal(container, name, {
      label: `Terminal of ${name}: type commands here. ${LEAVE_HINT}`,
      onOpen: () => current() && setState('open'),
      onSize: (s) => current() && setSize({ ...s }),
      onEnd: (e) => {
        if (!current()) return;
        setEnd(e);
        setState('ended');
      },
      onLeave: () => closer.current?.focus(),
    });
    if (!current()) {
      opened.dispose();
      return;
    }
    session.current = opened;
  };

  // The section keeps its screen in the page while closed, so that the
  // terminal has its size before it connects.
  const shown = state !== 'closed';
  return (
    <section
      class="terminal"
      aria-label={`Terminal of ${name}`}
      data-terminal-state={state}
      data-rows={size?.rows}
      data-cols={size?.cols}
    >
      <div class="actions">
        {state === 'closed' || state === 'ended' ? (
          <button type="button" ref={opener} disabled={!running} onClick={open}>
            {state === 'ended' ? 'Open a new terminal' : 'Terminal'}
          </button>
        ) : null}
        {shown ? (
          <button
            type="button"
            ref={closer}
            onClick={() => {
              refocus.current = true;
              close();
            }}
          >
            Close the terminal
          </button>
        ) : null}
        {!running && state === 'closed' ? <span class="reason">The machine must be running.</span> : null}
      </div>
      {state === 'ended' && end ? (
        <p class={`terminal-end ${end.ok ? '' : 'terminal-failed'}`} role="status" data-terminal-end>
          Session ended: {end.message}.{end.hint ? ` ${end.hint}` : ''}
        </p>
      ) : (
        <p class="terminal-state" role="status">
          {STATE_TEXT[state]}
          {state === 'open' && size ? `, ${size.cols}×${size.rows}` : ''}
        </p>
      )}
      {shown ? (
        <p class="terminal-hint" data-terminal-hint>
          {LEAVE_HINT} (to its Close button); Tab and Escape go to the machine’s shell.
        </p>
      ) : null}
      <div class={`terminal-screen ${shown ? '' : 'terminal-hidden'}`} ref={screen} />
    </section>
  );
}
