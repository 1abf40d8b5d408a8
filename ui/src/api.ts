// The dashboard speaks only the daemon's public /v1 API, as the CLI does.
// Requests carry the session cookie (set by /ui/login); those that change
// something also carry the session's CSRF token, which the daemon requires.

/** An API error as the daemon reports it: `{"error": {code, message, hint}}`. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly hint: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

/** `GET /v1/ui/session`. */
export interface Session {
  id: string;
  csrf_token: string;
  created_at_ms: number;
  expires_at_ms: number;
}

let csrfToken: string | null = null;

/** Reads this browser's session, and keeps its CSRF token for writes. */
export async function loadSession(): Promise<Session> {
  const session = await api<Session>('GET', '/v1/ui/session');
  csrfToken = session.csrf_token;
  return session;
}

/** Turns any failure into an ApiError with a hint, never a blank page. */
export function asApiError(error: unknown): ApiError {
  if (error instanceof ApiError) return error;
  return new ApiError(
    0,
    'unreachable',
    'The dashboard cannot reach the hearth daemon.',
    'Is `hearth serve` still running? Start it again, then reload this page.',
  );
}

async function errorOf(response: Response): Promise<ApiError> {
  const text = await response.text().catch(() => '');
  try {
    const body = JSON.parse(text) as { error?: { code?: string; message?: string; hint?: string } };
    if (body.error?.message) {
      let hint = body.error.hint ?? '';
      if (response.status === 401) {
        // The daemon's hint speaks of bearer tokens; a browser needs a link.
        hint = 'Your dashboard session has ended or was revoked. Run `hearth ui` for a new link.';
      }
      return new ApiError(response.status, body.error.code ?? 'error', body.error.message, hint);
    }
  } catch {
    // Not JSON: reported below with the status.
  }
  return new ApiError(
    response.status,
    'http_error',
    `The daemon answered ${response.status} ${response.statusText}.`.trim(),
    'The daemon log (hearth serve) has details.',
  );
}

/** One API call. Throws an ApiError on any failure. */
export async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Accept: 'application/json' };
  if (method !== 'GET' && method !== 'HEAD') {
    if (csrfToken === null) await loadSession();
    headers['X-CSRF-Token'] = csrfToken ?? '';
  }
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
    });
  } catch (error) {
    throw asApiError(error);
  }
  if (!response.ok) throw await errorOf(response);
  // 204, and 202 from a signal, have no body.
  const text = await response.text();
  if (text === '') return undefined as T;
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new ApiError(
      response.status,
      'http_error',
      `The daemon's answer to ${method} ${path} is not JSON.`,
      'The daemon log (hearth serve) has details.',
    );
  }
}

/** Percent-encodes one path segment. */
export const seg = encodeURIComponent;

// The wire types the views read (a subset of crates/client/src/types).

export interface Status {
  version: string;
  data_dir: string;
  uptime_secs: number;
  ingress: string | null;
  tcp: string | null;
  dns: { listen: string | null; problem: string | null };
  store: { backend: string; location: string; revision: number; compacted_revision: number };
  host: {
    kvm: { present: boolean; accessible: boolean; usable: boolean | null; detail: string };
    qemu: { path: string; version: string | null } | null;
    firecracker: { path: string; version: string | null } | null;
    default_backend: string;
    resources?: {
      cpus: number;
      load: [number, number, number];
      memory_total_bytes: number;
      memory_available_bytes: number;
      disk_total_bytes: number;
      disk_available_bytes: number;
    };
  };
}

export interface Machine {
  name: string;
  /** The host that runs it; null for a machine from before hosts. */
  host?: string | null;
  image: string;
  backend: string;
  desired: 'running' | 'stopped' | 'sleeping';
  state: 'created' | 'starting' | 'running' | 'stopping' | 'stopped' | 'failed' | 'lost' | 'sleeping';
  phase: string | null;
  reason: string | null;
  nics: { network: string; ip: string; dns_name: string }[];
  ports: string[];
  cpus: number;
  memory_mib: number;
  disk_mib?: number | null;
  /** Seconds without a connection after which it sleeps; absent: never. */
  sleep_after_secs?: number | null;
  boot_ms: number | null;
  kernel: string | null;
  ports_problem: string | null;
  /** Unix seconds. */
  created_at: number;
  started_at: number | null;
}

export interface ChangeEvent {
  revision: number;
  kind: 'put' | 'delete';
  key: string;
  value: string | null;
  encoding: 'utf8' | 'base64';
  version: number;
}

export interface AppSummary {
  name: string;
  active: number;
  version_count: number;
  routes: string[];
  urls: string[];
  serving: number | null;
  error: string | null;
  updated_at: number;
}

export interface AppVersion {
  number: number;
  sha256: string;
  size: number;
  created_at: number;
  manifest: string | null;
}

/** `GET /v1/apps/{name}`. */
export interface AppDetail extends AppSummary {
  versions: AppVersion[];
}

/** `PUT /v1/apps/{name}`'s answer. */
export interface DeployResult {
  app: string;
  version: AppVersion;
  compiled: boolean;
  duration_ms: number;
  urls: string[];
}

export interface AppLogLine {
  time: number;
  version: number;
  stream: 'stdout' | 'stderr' | 'request' | 'hearth';
  text: string;
}

/** `GET /v1/metrics/query`. */
export interface MetricQueryResult {
  name: string;
  since_ms: number;
  until_ms: number;
  step_ms?: number;
  interval_ms: number;
  series: { labels: Record<string, string>; points: { at: number; value: number }[] }[];
}

export type RunStatus = 'running' | 'waiting' | 'completed' | 'failed' | 'cancelled';

export interface RunSummary {
  id: string;
  workflow: string;
  version: number;
  status: RunStatus;
  input: string;
  output: string | null;
  error: string | null;
  waiting_for: string | null;
  deadline: number | null;
  started_by: string;
  parent: string | null;
  executions: number;
  created_at: number;
  updated_at: number;
  finished_at: number | null;
}

export interface JournalStep {
  seq: number;
  at: number;
  call: string;
  outcome: string;
  entry: unknown;
}

/** `GET /v1/runs/{id}`. */
export interface RunDetail extends RunSummary {
  journal: JournalStep[];
  pending_signals: { name: string; data: string; sent_at: number }[];
}

export interface RunLogLine {
  time: number;
  source: 'log' | 'output';
  text: string;
}

/** A file's bytes as base64, as deploy requests carry components. */
export function base64Of(file: Blob): Promise<string> {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => {
      const url = String(reader.result);
      resolve(url.slice(url.indexOf(',') + 1));
    };
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}
