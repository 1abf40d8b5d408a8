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

export function MachineTerminal({ name, running }: { name: string; running: boolean }) {
  const [state, setState] = useState<State>('closed');
  const [end, setEnd] = useState<Ended | null>(null);
  const [size, setSize] = useState<{ rows: number; cols: number } | null>(null);
  const screen = useRef<HTMLDivElement>(null);
  const session = useRef<Session | null>(null);
  const opener = useRef<HTMLButtonElement>(null);
  const refocus = useRef(false);
  // After Close, the keyboard goes back to the button that opens one.
  useEffect(() => {
    if (state === 'closed' && refocus.current) {
      refocus.current = false;
      opener.current?.focus();
    }
  }, [state]);

  const close = () => {
    session.current?.dispose();
    session.current = null;
    setState('closed');
    setEnd(null);
    setSize(null);
  };
  // Leaving the page ends the session.
  useEffect(() => close, [name]);

  const open = async () => {
    session.current?.dispose();
    session.current = null;
    setEnd(null);
    setState('loading');
    let module: typeof import('../terminal');
    try {
      module = await import('../terminal');
    } catch {
      setState('closed');
      setError(
        new ApiError(0, 'unreachable', 'The terminal could not be loaded.', 'Is `hearth serve` still running? Reload the page.'),
      );
      return;
    }
    // The screen is shown from the render after `loading`: it has its size.
    await new Promise((resolve) => requestAnimationFrame(resolve));
    const container = screen.current;
    if (!container) return;
    setState('connecting');
    session.current = module.openTerminal(container, name, {
      label: `Terminal of ${name}: type commands here`,
      onOpen: () => setState('open'),
      onSize: (s) => setSize({ ...s }),
      onEnd: (e) => {
        setEnd(e);
        setState('ended');
      },
    });
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
      <div class={`terminal-screen ${shown ? '' : 'terminal-hidden'}`} ref={screen} />
    </section>
  );
}
