import { useEffect, useRef, useState } from 'preact/hooks';
import { api, asApiError, type ApiError } from './api';
import { setError } from './errors';
import { live, touches, type Update } from './live';

/** Re-renders on every update of the live stream (new events, connection). */
export function useLive(): typeof live {
  const [, tick] = useState(0);
  useEffect(() => live.subscribe(() => tick((n) => n + 1)), []);
  return live;
}

/** Reads `path`, and reads it again, at most every 200 ms, whenever the
 * live stream shows a change under one of `prefixes` (or after a break).
 * Only the answer to the latest read of the current path is kept: a slow
 * one for a path since left (another scope, another filter), or one a
 * later read overtook, is dropped. */
export function useResource<T>(
  path: string,
  prefixes: string[],
): { data: T | null; error: ApiError | null; reload: () => void } {
  const [data, setData] = useState<T | null>(null);
  const [failure, setFailure] = useState<ApiError | null>(null);
  const pending = useRef<number | null>(null);
  const current = useRef(path);
  current.current = path;
  const latest = useRef(0);
  const load = useRef(() => {});
  load.current = () => {
    const mine = ++latest.current;
    const wanted = () => latest.current === mine && current.current === path;
    api<T>('GET', path)
      .then((value) => {
        if (!wanted()) return;
        setData(value);
        setFailure(null);
      })
      .catch((error) => {
        if (!wanted()) return;
        const apiError = asApiError(error);
        setFailure(apiError);
        setError(apiError);
      });
  };
  useEffect(() => {
    load.current();
    const unsubscribe = live.subscribe((update: Update) => {
      if (!touches(update, prefixes) || pending.current !== null) return;
      pending.current = window.setTimeout(() => {
        pending.current = null;
        load.current();
      }, 200);
    });
    return () => {
      unsubscribe();
      if (pending.current !== null) window.clearTimeout(pending.current);
    };
    // The prefixes are constants of each view.
  }, [path]);
  return { data, error: failure, reload: () => load.current() };
}

/** Sets the document title for a view. */
export function useTitle(title: string) {
  useEffect(() => {
    document.title = `${title} · hearth`;
  }, [title]);
}

/** A change a button makes: `run` asks `confirm` first (when given), and
 * while the action runs `busy` is true, `running` names it (`what`, for a
 * button that says "Removing…" on its own row) and further runs are
 * ignored (a double click makes one change); a failure is kept in
 * `error`, for an ErrorNote. Resolves to whether it ran and succeeded. */
export function useAction(): {
  busy: boolean;
  running: string | null;
  error: ApiError | null;
  run: (action: () => Promise<unknown>, options?: { confirm?: string; what?: string }) => Promise<boolean>;
  clear: () => void;
} {
  const [running, setRunning] = useState<string | null>(null);
  const [error, setFailure] = useState<ApiError | null>(null);
  const started = useRef(false);
  const run = async (action: () => Promise<unknown>, options: { confirm?: string; what?: string } = {}) => {
    if (started.current) return false;
    if (options.confirm !== undefined && !confirm(options.confirm)) return false;
    started.current = true;
    setRunning(options.what ?? '');
    setFailure(null);
    try {
      await action();
      return true;
    } catch (failure) {
      setFailure(asApiError(failure));
      return false;
    } finally {
      started.current = false;
      setRunning(null);
    }
  };
  return { busy: running !== null, running, error, run, clear: () => setFailure(null) };
}
