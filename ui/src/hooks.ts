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
 * live stream shows a change under one of `prefixes` (or after a break). */
export function useResource<T>(
  path: string,
  prefixes: string[],
): { data: T | null; error: ApiError | null; reload: () => void } {
  const [data, setData] = useState<T | null>(null);
  const [failure, setFailure] = useState<ApiError | null>(null);
  const pending = useRef<number | null>(null);
  const load = useRef(() => {});
  load.current = () => {
    api<T>('GET', path)
      .then((value) => {
        setData(value);
        setFailure(null);
      })
      .catch((error) => {
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
