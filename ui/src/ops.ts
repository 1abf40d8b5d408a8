// The wire types of services, config and alerts that the dashboard reads
// (a subset of crates/client/src/types/{services,config,alerts}.rs), the
// store prefixes each lives under (so that views follow them on the live
// stream), and the small pure helpers their views share.

/** Store prefixes, as `hearth_services::record`, `hearth_config::key` and
 * `hearth_monitor::keys` name them. */
export const SERVICES_PREFIX = 'services/';
export const CONFIG_PREFIX = 'config/';
export const ALERTS_PREFIX = 'alerts/';

export type Health = 'passing' | 'warning' | 'critical' | 'sleeping';
export type ServiceKind = 'machines' | 'registered' | 'app';

export interface Service {
  name: string;
  kind: ServiceKind;
  image: string | null;
  count: number | null;
  port: number | null;
  ports: string[];
  checks: string[];
  instances: number;
  passing: number;
  /** Instances whose machines sleep. */
  sleeping?: number;
  routes: string[];
  tags: string[];
  description: string | null;
  links: Record<string, string>;
  /** Unix seconds. */
  created_at: number;
  problem?: string | null;
  version: number | null;
  rollout: { from: number; to: number; state: string; reason: string | null } | null;
  /** Each machine sleeps after this long idle (services of machines). */
  sleep_after_secs?: number | null;
}

export interface HealthChange {
  at_ms: number;
  health: Health;
  output: string;
}

export interface ServiceInstance {
  id: string;
  address: string | null;
  port: number;
  machine: string | null;
  health: Health;
  output: string;
  since_ms: number | null;
  ttl_s: number | null;
  checks: string[];
  tags: string[];
  changes: HealthChange[];
  version: number | null;
  draining: boolean;
}

export interface ServiceDetail {
  service: Service;
  instances: ServiceInstance[];
}

export interface ServiceEvent {
  at_ms: number;
  instance: string | null;
  action: string;
  reason: string;
}

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export interface ConfigEntry {
  layer: string;
  key: string;
  value: Json;
  secret: boolean;
  source?: string;
  revision: number;
}

export interface ConfigChange {
  kind: 'value' | 'schema';
  layer?: string;
  key: string;
  before?: Json;
  after?: Json;
  secret: boolean;
}

export interface ConfigHistoryEntry {
  revision: number;
  at_ms: number;
  changes: ConfigChange[];
}

export interface ConfigDiff {
  from: number;
  to: number;
  changes: ConfigChange[];
}

export type AlertPhase = 'inactive' | 'pending' | 'firing' | 'resolved';

export interface AlertInfo {
  fingerprint: string;
  rule: string;
  phase: AlertPhase;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  active_since?: number;
  starts_at?: number;
  ends_at?: number;
  muted: boolean;
}

export interface AlertList {
  alerts: AlertInfo[];
  undelivered: number;
}

export interface Silence {
  id: string;
  matchers: string[];
  starts_at: number;
  ends_at: number;
  created_by: string;
  comment: string;
  active: boolean;
}

export interface AlertRules {
  text: string;
  builtin: string;
  rules: { name: string; input: string; notify: string[]; builtin: boolean; active: number }[];
  receivers: { name: string; kind: string }[];
}

export interface AlertHistoryEntry {
  at: number;
  id: string;
  rule: string;
  receiver: string;
  kind: string;
  status: 'firing' | 'resolved';
  group_labels: Record<string, string>;
  alerts: {
    status: 'firing' | 'resolved';
    labels: Record<string, string>;
    summary?: string;
    starts_at: number;
    ends_at?: number;
  }[];
  attempts: number;
  error?: string;
}

/** The text config shows for a secret: never its value, which the API
 * does not send either (it sends `"(secret)"`). */
export const MASK = '••••••';

/** A config value as one line: JSON for tables and lists, strings quoted
 * as TOML writes them, a secret masked whatever the value says. */
export function configText(value: Json | undefined, secret: boolean): string {
  if (secret) return MASK;
  if (value === undefined) return '';
  return JSON.stringify(value);
}

/** One label matcher of a silence: `name=value`, `!=`, `=~` or `!~`. */
function matches(matcher: string, labels: Record<string, string>): boolean {
  const m = /^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$/.exec(matcher);
  if (!m) return false;
  const [, name, op, raw] = m;
  const value = /^".*"$/.test(raw) ? raw.slice(1, -1).replace(/\\(.)/g, '$1') : raw;
  const actual = labels[name] ?? '';
  switch (op) {
    case '=':
      return actual === value;
    case '!=':
      return actual !== value;
    default: {
      let re: RegExp;
      try {
        re = new RegExp(`^(?:${value})$`);
      } catch {
        return false;
      }
      return op === '=~' ? re.test(actual) : !re.test(actual);
    }
  }
}

/** The active silences whose every matcher an alert's labels meet. */
export function silencesOf(labels: Record<string, string>, silences: Silence[]): Silence[] {
  return silences.filter((s) => s.active && s.matchers.every((m) => matches(m, labels)));
}

/** The alerts a person acts on: firing or pending, not resolved. */
export function isActive(alert: AlertInfo): boolean {
  return alert.phase === 'firing' || alert.phase === 'pending';
}

/** What a history entry says in one line: its alerts' summaries, or their labels. */
export function historyText(entry: AlertHistoryEntry): string {
  const parts = entry.alerts.map(
    (a) => a.summary ?? Object.entries(a.labels).map(([k, v]) => `${k}=${v}`).join(' '),
  );
  return parts.join('; ') || '—';
}

