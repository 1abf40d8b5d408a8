// A terminal into a machine: xterm.js on the exec WebSocket
// (`GET /v1/machines/{name}/exec`) with a tty of the terminal's size.
// Loaded on demand by views/MachineTerminal.tsx, so that no other page
// carries xterm.
//
// The protocol (crates/client/src/types/machines.rs): the first message is
// a text ExecStart; then binary messages are stdin and text messages are
// ExecControl (`{"resize":{rows,cols}}`, `"close_stdin"`). The daemon sends
// binary messages whose first byte is 1 (stdout) or 2 (stderr), and ends
// with a text ExecEnd (`{"exit":{code,signal}}` or `{"error":{...}}`).

import { FitAddon } from '@xterm/addon-fit';
import { type ITheme, Terminal } from '@xterm/xterm';
import '@xterm/xterm/css/xterm.css';
import { seg } from './api';
import './views/terminal.css';

/** The machine's login shell: bash where there is one, else sh. */
export const SHELL = ['/bin/sh', '-c', 'command -v bash >/dev/null 2>&1 && exec bash -l; exec sh -l'];

/** How a session ended, as the page says it. */
export interface Ended {
  /** One line: `exited with code 0`, or the daemon's error. */
  message: string;
  /** What to do about an error. */
  hint?: string;
  ok: boolean;
}

export interface Session {
  /** The tty's size, as last sent to the daemon. */
  size(): { rows: number; cols: number };
  /** The terminal's text, one line per row of its buffer. */
  text(): string;
  focus(): void;
  /** Ends the session (its processes are killed) and frees the terminal. */
  dispose(): void;
}

interface ExecEnd {
  exit?: { code: number | null; signal: number | null };
  error?: { code: string; message: string; hint: string };
}

const STDOUT = 1;
const STDERR = 2;

/** The page's colours (style.css's variables), which follow the system's scheme. */
function theme(): ITheme {
  const css = getComputedStyle(document.documentElement);
  const v = (name: string) => css.getPropertyValue(name).trim();
  return {
    background: v('--panel'),
    foreground: v('--fg'),
    cursor: v('--fg'),
    cursorAccent: v('--panel'),
    selectionBackground: v('--accent'),
    selectionForeground: v('--bg'),
  };
}

/** The dashboard's Content-Security-Policy (style-src 'self') refuses the
 * `<style>` elements xterm writes its colours and cell sizes into. Their
 * text is applied instead as constructed style sheets, which the policy
 * leaves to the page's scripts. */
function mirrorStyles(root: HTMLElement): () => void {
  const sheets = new Map<HTMLStyleElement, CSSStyleSheet>();
  const sync = () => {
    for (const element of root.querySelectorAll('style')) {
      let sheet = sheets.get(element);
      if (!sheet) {
        sheet = new CSSStyleSheet();
        sheets.set(element, sheet);
        document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
      }
      sheet.replaceSync(element.textContent ?? '');
    }
  };
  const observer = new MutationObserver(sync);
  observer.observe(root, { subtree: true, childList: true, characterData: true });
  sync();
  return () => {
    observer.disconnect();
    const ours = new Set(sheets.values());
    document.adoptedStyleSheets = document.adoptedStyleSheets.filter((s) => !ours.has(s));
  };
}

function endOf(text: string): Ended {
  let end: ExecEnd;
  try {
    end = JSON.parse(text) as ExecEnd;
  } catch {
    return { message: 'The daemon ended the session with a message this page cannot read.', ok: false };
  }
  if (end.exit) {
    const { code, signal } = end.exit;
    if (code !== null && code !== undefined) return { message: `exited with code ${code}`, ok: code === 0 };
    return { message: `killed by signal ${signal ?? '?'}`, ok: false };
  }
  if (end.error) return { message: `${end.error.message} (${end.error.code})`, hint: end.error.hint, ok: false };
  return { message: 'The session ended.', ok: false };
}

/** Opens a terminal in `container` running the machine's shell. `onOpen`
 * runs once the shell was asked for; `onEnd` once, when it ends for any
 * reason other than dispose(). */
export function openTerminal(
  container: HTMLElement,
  machine: string,
  {
    label,
    onOpen,
    onSize,
    onEnd,
    onLeave,
  }: {
    label: string;
    onOpen: () => void;
    /** Ctrl+] was pressed in the terminal: the keyboard's way out of it
     * (xterm takes Tab, Shift+Tab and Escape), not sent to the shell. */
    onLeave: () => void;
    /** The tty's size, each time it is sent to the daemon. */
    onSize: (size: { rows: number; cols: number }) => void;
    onEnd: (end: Ended) => void;
  },
): Session {
  Terminal.strings.promptLabel = label;
  const unmirror = mirrorStyles(container);
  const term = new Terminal({
    cursorBlink: true,
    fontFamily: "ui-monospace, 'SFMono-Regular', Menlo, Consolas, monospace",
    fontSize: 14,
    // Room under the baseline: at 1.0 an underscore falls outside its row.
    lineHeight: 1.2,
    scrollback: 2000,
    // WCAG AA for whatever colours the machine's programs choose.
    minimumContrastRatio: 4.5,
    theme: theme(),
  });
  term.attachCustomKeyEventHandler((event) => {
    const leave = event.ctrlKey && !event.altKey && !event.metaKey && (event.key === ']' || event.code === 'BracketRight');
    if (!leave) return true;
    if (event.type === 'keydown') {
      event.preventDefault();
      onLeave();
    }
    return false;
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(container);
  fit.fit();

  const scheme = matchMedia('(prefers-color-scheme: dark)');
  const recolour = () => {
    term.options.theme = theme();
  };
  scheme.addEventListener('change', recolour);

  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/machines/${seg(machine)}/exec`;
  const socket = new WebSocket(url);
  socket.binaryType = 'arraybuffer';
  const encoder = new TextEncoder();
  let sent = { rows: term.rows, cols: term.cols };
  let opened = false;
  let ended = false;
  let disposed = false;

  const finish = (end: Ended) => {
    if (ended || disposed) return;
    ended = true;
    term.options.disableStdin = true;
    term.options.cursorBlink = false;
    term.write(`\r\n\x1b[1m[${end.message}]\x1b[0m\r\n`);
    onEnd(end);
  };

  socket.addEventListener('open', () => {
    opened = true;
    fit.fit();
    sent = { rows: term.rows, cols: term.cols };
    socket.send(JSON.stringify({ argv: SHELL, env: ['TERM=xterm-256color'], tty: sent, stdin: true }));
    onSize(sent);
    onOpen();
    term.focus();
  });
  socket.addEventListener('message', (event: MessageEvent<ArrayBuffer | string>) => {
    if (typeof event.data === 'string') {
      finish(endOf(event.data));
      return;
    }
    const bytes = new Uint8Array(event.data);
    if (bytes.length > 1 && (bytes[0] === STDOUT || bytes[0] === STDERR)) term.write(bytes.subarray(1));
  });
  socket.addEventListener('close', () => {
    // A refused upgrade (404, 409, 403) reaches a browser's WebSocket only
    // as a close with code 1006: the page cannot read the daemon's reason.
    finish({
      message: !opened ? 'The terminal could not connect.' : 'The connection to the daemon ended.',
      hint: 'The machine must be running; the daemon log (hearth serve) says why it ended.',
      ok: false,
    });
  });

  const send = (data: string | Uint8Array) => {
    if (!ended && socket.readyState === WebSocket.OPEN) socket.send(data);
  };
  term.onData((data) => send(encoder.encode(data)));
  term.onBinary((data) => send(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff)));
  term.onResize(({ rows, cols }) => {
    if (rows === sent.rows && cols === sent.cols) return;
    if (!opened || ended) return;
    sent = { rows, cols };
    send(JSON.stringify({ resize: sent }));
    onSize(sent);
  });

  // The container's size follows the window (and the page's layout).
  let frame = 0;
  const resized = new ResizeObserver(() => {
    cancelAnimationFrame(frame);
    frame = requestAnimationFrame(() => {
      if (!disposed && container.clientWidth > 0) fit.fit();
    });
  });
  resized.observe(container);

  return {
    size: () => sent,
    text: () => {
      const buffer = term.buffer.active;
      const lines: string[] = [];
      for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i)?.translateToString(true) ?? '');
      return lines.join('\n').trimEnd();
    },
    focus: () => term.focus(),
    dispose: () => {
      if (disposed) return;
      disposed = true;
      // The daemon kills the session's processes when its socket closes:
      // no end of input first, which would let the shell exit by itself
      // and leave its background jobs running.
      socket.close(1000, 'closed from the dashboard');
      resized.disconnect();
      cancelAnimationFrame(frame);
      scheme.removeEventListener('change', recolour);
      term.dispose();
      unmirror();
    },
  };
}
