// hearth's JavaScript prelude: evaluated before the handler module, it
// gives the handler `kv` and `config` as globals, over the key-value and
// config interfaces every hearth app has. `fetch` is the engine's own,
// through wasi:http, and reaches only the hosts the app's manifest lists.
import { open } from "wasi:keyvalue/store@0.2.0-draft";
import { increment } from "wasi:keyvalue/atomics@0.2.0-draft";
import { get as configGet, getAll as configGetAll } from "wasi:config/store@0.2.0-rc.1";

const encoder = new TextEncoder();
const decoder = new TextDecoder();
let bucket;
const store = () => (bucket ??= open("default"));
const bytes = (value) => (value instanceof Uint8Array ? value : encoder.encode(String(value)));

globalThis.kv = {
  /** The value under `key` as text, or null. */
  get(key) {
    const value = store().get(key);
    return value === undefined ? null : decoder.decode(value);
  },
  /** The value under `key` as bytes, or null. */
  getBytes(key) {
    return store().get(key) ?? null;
  },
  /** Parses the value under `key` as JSON, or null. */
  getJson(key) {
    const text = this.get(key);
    return text === null ? null : JSON.parse(text);
  },
  /** Stores text, bytes (a Uint8Array) or, with setJson, any JSON value. */
  set(key, value) {
    store().set(key, bytes(value));
  },
  setJson(key, value) {
    store().set(key, encoder.encode(JSON.stringify(value)));
  },
  delete(key) {
    store().delete(key);
  },
  has(key) {
    return store().exists(key);
  },
  /** Adds `by` (default 1) to the number under `key` atomically; returns the new value. */
  increment(key, by = 1) {
    return Number(increment(store(), key, BigInt(by)));
  },
  /** Every key, in order. */
  keys() {
    const keys = [];
    let cursor;
    do {
      const page = store().listKeys(cursor);
      keys.push(...page.keys);
      cursor = page.cursor;
    } while (cursor !== undefined);
    return keys;
  },
};

globalThis.config = {
  /** The config value or secret under `key`, or null. */
  get(key) {
    return configGet(key) ?? null;
  },
  /** Every config value and secret the app may read, as an object. */
  all() {
    return Object.fromEntries(configGetAll());
  },
};
