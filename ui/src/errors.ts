// The one error the banner shows: the last API error, with its hint.

import { useEffect, useState } from 'preact/hooks';
import type { ApiError } from './api';

let current: ApiError | null = null;
const listeners = new Set<(error: ApiError | null) => void>();

export function setError(error: ApiError | null) {
  if (error === current) return;
  current = error;
  for (const listener of listeners) listener(error);
}

export function useError(): ApiError | null {
  const [error, set] = useState(current);
  useEffect(() => {
    listeners.add(set);
    set(current);
    return () => {
      listeners.delete(set);
    };
  }, []);
  return error;
}
