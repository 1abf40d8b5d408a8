//! The [`Config`] handle: reads, the one write path, history, and the loop
//! that tells consumers config moved.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hearth_store::{Compare, Follower, Op, OpResponse, Revision, Store, Txn};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use crate::Error;
use crate::key::{self, HEAD, HISTORY, Key, Layer, SCHEMAS, Scope, VALUES, covers};
use crate::schema::Schema;
use crate::secret::{FILE_PREFIX, Keyring};
use crate::tree::{self, HIDDEN, Leaf};

/// At most one [`Config::changes`] bump per this interval.
pub const THROTTLE: Duration = Duration::from_millis(100);
/// History records kept; older ones are dropped.
const HISTORY_KEPT: usize = 1000;
/// Tries of a write that keeps losing its compare-and-swap.
const ATTEMPTS: u32 = 16;

/// A leaf as stored: a value in clear, or a secret's ciphertext; and the
/// file it was imported from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredValue {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// age ciphertext of the value's JSON text, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl StoredValue {
    /// The value as anyone may see it: a secret is [`HIDDEN`].
    pub fn shown(&self) -> Value {
        match (&self.value, &self.secret) {
            (Some(value), _) => value.clone(),
            _ => Value::String(HIDDEN.into()),
        }
    }

    pub fn is_secret(&self) -> bool {
        self.secret.is_some()
    }
}

/// The bookkeeping key's value.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Head {
    /// History records up to this revision were dropped.
    #[serde(default)]
    pruned_through: Revision,
}

/// One committed change, as the history keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    at_ms: u64,
    changes: Vec<RecordChange>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum RecordChange {
    Value { layer: String, key: String, before: Option<StoredValue>, after: Option<StoredValue> },
    Schema { prefix: String, before: Option<Value>, after: Option<Value> },
}

/// A change of the history, for people.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub revision: Revision,
    pub at_ms: u64,
    pub changes: Vec<HistoryChange>,
}

/// One leaf or schema that changed; secrets are shown as [`HIDDEN`].
#[derive(Debug, Clone, PartialEq)]
pub enum HistoryChange {
    Value(ValueChange),
    Schema { prefix: String, before: Option<Value>, after: Option<Value> },
}

/// One leaf that changed.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueChange {
    pub layer: String,
    pub key: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub secret: bool,
}

impl ValueChange {
    /// A leaf's change as anyone may see it: secrets [`HIDDEN`].
    fn shown(layer: String, key: String, before: Option<&StoredValue>, after: Option<&StoredValue>) -> Self {
        ValueChange {
            layer,
            key,
            secret: before.is_some_and(StoredValue::is_secret) || after.is_some_and(StoredValue::is_secret),
            before: before.map(StoredValue::shown),
            after: after.map(StoredValue::shown),
        }
    }
}

/// A leaf of one layer, as `config ls` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryView {
    pub layer: Layer,
    pub key: Key,
    /// [`HIDDEN`] for a secret.
    pub value: Value,
    pub secret: bool,
    pub source: Option<String>,
    /// The revision of its last change.
    pub revision: Revision,
}

/// A consumer's own `hearth.toml` `[config]`, laid just above `files`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Base {
    /// What `--explain` names it: `hearth.toml (app shop, version 3)`.
    pub label: String,
    pub values: Vec<(Key, Value)>,
}

impl Base {
    /// A manifest's flat `[config]` table: each name a dotted key, each
    /// value a string.
    pub fn from_strings<'a>(
        label: impl Into<String>,
        values: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<Self, Error> {
        let values = values
            .into_iter()
            .map(|(k, v)| Ok((Key::parse(k)?, Value::String(v.clone()))))
            .collect::<Result<_, Error>>()?;
        Ok(Self { label: label.into(), values })
    }
}

/// A scope's merged config at a revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub scope: Scope,
    pub revision: Revision,
    pub leaves: BTreeMap<Key, Leaf>,
}

impl Resolved {
    /// The merged tree.
    pub fn tree(&self) -> Value {
        tree::to_tree(self.leaves.iter().map(|(k, l)| (k, &l.value)))
    }

    /// The part of the tree under `prefix` (all for ""), or `None` when
    /// nothing is set there.
    pub fn at(&self, prefix: &str) -> Option<Value> {
        if prefix.is_empty() {
            return Some(self.tree());
        }
        let mut node = self.tree();
        for segment in prefix.split('.') {
            node = node.as_object_mut()?.remove(segment)?;
        }
        Some(node)
    }

    /// Every leaf as text, the way `wasi:config` serves them.
    pub fn flat(&self) -> BTreeMap<String, String> {
        self.leaves.iter().map(|(k, l)| (k.to_string(), tree::as_text(&l.value))).collect()
    }

    /// `config.env`.
    pub fn env(&self) -> String {
        tree::to_env(self.leaves.iter().map(|(k, l)| (k, &l.value)))
    }

    /// `config.json`.
    pub fn json(&self) -> String {
        let mut text = serde_json::to_string_pretty(&self.tree()).expect("JSON serialises");
        text.push('\n');
        text
    }
}

/// Everything under `config/` as read in one transaction.
struct Snapshot {
    revision: Revision,
    head: Option<(Head, Revision)>,
    values: BTreeMap<Layer, BTreeMap<Key, (StoredValue, Revision)>>,
    schemas: BTreeMap<String, Value>,
}

/// What a write changes, before it is checked and committed.
#[derive(Default)]
struct Plan {
    values: Vec<(Layer, Key, Option<StoredValue>)>,
    schemas: Vec<(String, Option<Value>)>,
}

/// The handle every part of the daemon shares.
#[derive(Clone)]
pub struct Config {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    keys: RwLock<Arc<Keyring>>,
    changes: watch::Sender<Revision>,
    /// Writes hold it shared from encrypting a secret to committing it; a
    /// rekey holds it alone, so no write encrypts to a key being retired
    /// (or forgotten), and one rekey runs at a time.
    writing: tokio::sync::RwLock<()>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config").field("keys", &self.keys()).finish_non_exhaustive()
    }
}

impl Config {
    /// Config on `store`, with its key file in `key_dir` (made if missing).
    pub fn open(store: Arc<dyn Store>, key_dir: &Path) -> Result<Self, Error> {
        Self::open_with_key(store, &key_dir.join(crate::secret::KEY_FILE))
    }

    /// As [`Config::open`], with the key file at `key_file` (one that
    /// hosts sharing the store share).
    pub fn open_with_key(store: Arc<dyn Store>, key_file: &Path) -> Result<Self, Error> {
        let keys = Keyring::open_file(key_file)?;
        let (changes, _) = watch::channel(0);
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                keys: RwLock::new(Arc::new(keys)),
                changes,
                writing: tokio::sync::RwLock::new(()),
            }),
        })
    }

    fn keys(&self) -> Arc<Keyring> {
        self.inner.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The public key secrets are encrypted to (`age1...`), and how many
    /// retired keys are kept.
    pub fn recipient(&self) -> (String, usize) {
        let keys = self.keys();
        (keys.recipient().to_string(), keys.retired())
    }

    /// `value` encrypted to the daemon's current key, base64: for a secret
    /// a consumer read and must keep outside config (a workflow's journal).
    pub fn seal(&self, value: &Value) -> Result<String, Error> {
        self.keys().encrypt(value)
    }

    /// A value back from [`Config::seal`], with the current key or one a
    /// rekey retired (not one `rekey --forget` dropped).
    pub fn open_sealed(&self, sealed: &str) -> Result<Value, Error> {
        self.keys().decrypt(sealed)
    }

    /// The revision of the latest committed change consumers have been told
    /// of; it moves after each one (see the crate documentation).
    pub fn changes(&self) -> watch::Receiver<Revision> {
        self.inner.changes.subscribe()
    }

    // -- reads ------------------------------------------------------------

    async fn snapshot(&self) -> Result<Snapshot, Error> {
        Ok(self.read(false).await?.0)
    }

    /// Everything under `config/` in one read: the snapshot, and (with
    /// `history`) the history records in revision order.
    async fn read(&self, history: bool) -> Result<(Snapshot, Vec<(Revision, Record)>), Error> {
        let mut txn = Txn::new()
            .and_then(Op::Get { key: HEAD.into() })
            .and_then(Op::Range { prefix: VALUES.into() })
            .and_then(Op::Range { prefix: SCHEMAS.into() });
        if history {
            txn = txn.and_then(Op::Range { prefix: HISTORY.into() });
        }
        let response = self.inner.store.txn(txn).await?;
        let mut responses = response.responses.into_iter();
        let head = match responses.next() {
            Some(OpResponse::Get { kv: Some(kv) }) => {
                Some((decode::<Head>(&kv.key, &kv.value)?, kv.mod_revision))
            }
            _ => None,
        };
        let mut values: BTreeMap<Layer, BTreeMap<Key, (StoredValue, Revision)>> = BTreeMap::new();
        if let Some(OpResponse::Range { kvs }) = responses.next() {
            for kv in kvs {
                let Some((layer, key)) = Layer::from_store_key(&kv.key) else {
                    tracing::warn!(key = kv.key, "Skipping a config key that is not LAYER/KEY.");
                    continue;
                };
                let stored: StoredValue = decode(&kv.key, &kv.value)?;
                values.entry(layer).or_default().insert(key, (stored, kv.mod_revision));
            }
        }
        let mut schemas = BTreeMap::new();
        if let Some(OpResponse::Range { kvs }) = responses.next() {
            for kv in kvs {
                schemas.insert(schema_prefix(&kv.key[SCHEMAS.len()..]), decode::<Value>(&kv.key, &kv.value)?);
            }
        }
        let mut records = Vec::new();
        if let Some(OpResponse::Range { kvs }) = responses.next() {
            for kv in kvs {
                records.push((kv.mod_revision, decode::<Record>(&kv.key, &kv.value)?));
            }
            records.sort_by_key(|(revision, _)| *revision);
        }
        Ok((Snapshot { revision: response.revision, head, values, schemas }, records))
    }

    /// The merged config of `scope` (with the consumer's own `base` laid
    /// above `files`), secrets decrypted: for delivery to that consumer only.
    pub async fn resolve(&self, scope: &Scope, base: Option<&Base>) -> Result<Resolved, Error> {
        let snapshot = self.snapshot().await?;
        self.merge(&snapshot, scope, base, true)
    }

    /// The same for a consumer in several scopes, narrower last (a
    /// service's machine: `service:web`, then `machine:web-2`): their
    /// layers are laid in that order between `global` and `override`.
    pub async fn resolve_nested(&self, scopes: &[Scope]) -> Result<Resolved, Error> {
        let snapshot = self.snapshot().await?;
        self.merge_stack(&snapshot, scopes, None, true)
    }

    /// The same, secrets shown as [`HIDDEN`]: for people (`config get`).
    pub async fn explain(&self, scope: &Scope, base: Option<&Base>) -> Result<Resolved, Error> {
        let snapshot = self.snapshot().await?;
        self.merge(&snapshot, scope, base, false)
    }

    fn merge(
        &self,
        snapshot: &Snapshot,
        scope: &Scope,
        base: Option<&Base>,
        reveal: bool,
    ) -> Result<Resolved, Error> {
        self.merge_stack(snapshot, std::slice::from_ref(scope), base, reveal)
    }

    fn merge_stack(
        &self,
        snapshot: &Snapshot,
        scopes: &[Scope],
        base: Option<&Base>,
        reveal: bool,
    ) -> Result<Resolved, Error> {
        let keys = self.keys();
        let mut leaves = BTreeMap::new();
        let scope = scopes.last().cloned().unwrap_or(Scope::Global);
        for layer in Layer::stack(scopes) {
            if let Some(entries) = snapshot.values.get(&layer) {
                let mut laid = Vec::with_capacity(entries.len());
                for (key, (stored, _)) in entries {
                    let value = match (&stored.value, &stored.secret) {
                        (Some(value), _) => value.clone(),
                        (None, Some(cipher)) if reveal => keys.decrypt(cipher).map_err(|e| match e {
                            Error::Undecryptable { reason } => {
                                Error::Undecryptable { reason: format!("{layer} {key}: {reason}") }
                            }
                            other => other,
                        })?,
                        _ => Value::String(HIDDEN.into()),
                    };
                    laid.push((
                        key.clone(),
                        Leaf {
                            value,
                            secret: stored.is_secret(),
                            layer: layer.to_string(),
                            source: stored.source.clone(),
                        },
                    ));
                }
                tree::overlay(&mut leaves, laid);
            }
            if layer == Layer::Files
                && let Some(base) = base
            {
                let laid = base.values.iter().map(|(k, v)| {
                    (
                        k.clone(),
                        Leaf { value: v.clone(), secret: false, layer: base.label.clone(), source: None },
                    )
                });
                tree::overlay(&mut leaves, laid.collect::<Vec<_>>());
            }
        }
        Ok(Resolved { scope, revision: snapshot.revision, leaves })
    }

    /// [`Config::resolve_nested`] with secrets hidden: what a machine of a
    /// service gets, for people.
    pub async fn explain_nested(&self, scopes: &[Scope]) -> Result<Resolved, Error> {
        let snapshot = self.snapshot().await?;
        self.merge_stack(&snapshot, scopes, None, false)
    }

    /// The leaves of one layer (or all), under `prefix`, secrets hidden.
    pub async fn entries(&self, layer: Option<&Layer>, prefix: &str) -> Result<Vec<EntryView>, Error> {
        key::check_prefix(prefix)?;
        let snapshot = self.snapshot().await?;
        let mut out = Vec::new();
        for (l, entries) in &snapshot.values {
            if layer.is_some_and(|want| want != l) {
                continue;
            }
            for (k, (stored, revision)) in entries {
                if covers(prefix, k.as_str()) {
                    out.push(EntryView {
                        layer: l.clone(),
                        key: k.clone(),
                        value: stored.shown(),
                        secret: stored.is_secret(),
                        source: stored.source.clone(),
                        revision: *revision,
                    });
                }
            }
        }
        Ok(out)
    }

    /// The schemas, by prefix.
    pub async fn schemas(&self) -> Result<BTreeMap<String, Value>, Error> {
        Ok(self.snapshot().await?.schemas)
    }

    // -- writes -----------------------------------------------------------

    /// Sets `key` in `layer` to `value` (a table sets its leaves and
    /// replaces what was under `key`); with `secret`, every leaf is
    /// encrypted. Returns the revision of the change.
    pub async fn set(&self, layer: &Layer, key: &Key, value: Value, secret: bool) -> Result<Revision, Error> {
        let _writing = self.inner.writing.read().await;
        let keys = self.keys();
        let mut leaves = Vec::new();
        for (k, v) in tree::flatten(Some(key), value)? {
            let stored = if secret {
                StoredValue { value: None, secret: Some(keys.encrypt(&v)?), source: None }
            } else {
                StoredValue { value: Some(v), secret: None, source: None }
            };
            leaves.push((k, stored));
        }
        self.commit(|snapshot| {
            let mut plan = Plan::default();
            let current = snapshot.values.get(layer);
            for (k, _) in current.into_iter().flatten() {
                if k.is_within(key) || key.is_within(k) {
                    plan.values.push((layer.clone(), k.clone(), None));
                }
            }
            for (k, stored) in &leaves {
                plan.values.push((layer.clone(), k.clone(), Some(stored.clone())));
            }
            Ok(plan)
        })
        .await
    }

    /// Removes `key` (and everything under it) from `layer`.
    pub async fn remove(&self, layer: &Layer, key: &Key) -> Result<Revision, Error> {
        self.commit(|snapshot| {
            let mut plan = Plan::default();
            for (k, _) in snapshot.values.get(layer).into_iter().flatten() {
                if k.is_within(key) {
                    plan.values.push((layer.clone(), k.clone(), None));
                }
            }
            if plan.values.is_empty() {
                return Err(Error::NotFound { what: format!("{key} in {layer}") });
            }
            Ok(plan)
        })
        .await
    }

    /// Replaces the `files` layer with these files, merged in order (a
    /// later file wins). Each is `(name, text)`: TOML, or JSON when the
    /// name ends in `.json`, or YAML in `.yaml` or `.yml`; a leaf written `age:BASE64` (by `config
    /// encrypt`) is kept as a secret, and must open with this daemon's key.
    pub async fn import(&self, files: &[(String, String)]) -> Result<Revision, Error> {
        let _writing = self.inner.writing.read().await;
        let keys = self.keys();
        let mut merged: BTreeMap<Key, Leaf> = BTreeMap::new();
        for (name, text) in files {
            let bad = |reason: String| Error::InvalidValue {
                key: String::new(),
                reason: format!("{name}: {reason}"),
            };
            let value: Value = if name.ends_with(".json") {
                serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?
            } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                crate::secret::from_yaml(text).map_err(|e| bad(e.to_string()))?
            } else {
                let table: toml::Table =
                    toml::from_str(text).map_err(|e| bad(format!("not TOML: {}", e.message())))?;
                tree::from_toml(toml::Value::Table(table))
                    .ok_or_else(|| bad("infinity and NaN have no JSON form".into()))?
            };
            let leaves = tree::flatten(None, value).map_err(|e| bad(e.to_string()))?;
            let mut laid = Vec::new();
            for (k, v) in leaves {
                let secret = match &v {
                    Value::String(s) if s.starts_with(FILE_PREFIX) => {
                        let cipher = &s[FILE_PREFIX.len()..];
                        keys.decrypt(cipher).map_err(|e| bad(format!("{k}: {e}")))?;
                        true
                    }
                    _ => false,
                };
                laid.push((k, Leaf { value: v, secret, layer: "files".into(), source: Some(name.clone()) }));
            }
            tree::overlay(&mut merged, laid);
        }
        let leaves: Vec<(Key, StoredValue)> = merged
            .into_iter()
            .map(|(k, leaf)| {
                let stored = match (leaf.secret, leaf.value) {
                    (true, Value::String(s)) => StoredValue {
                        value: None,
                        secret: Some(s[FILE_PREFIX.len()..].to_owned()),
                        source: leaf.source,
                    },
                    (_, value) => StoredValue { value: Some(value), secret: None, source: leaf.source },
                };
                (k, stored)
            })
            .collect();
        self.commit(|snapshot| {
            let mut plan = Plan::default();
            let current = snapshot.values.get(&Layer::Files);
            for (k, _) in current.into_iter().flatten() {
                if !leaves.iter().any(|(nk, _)| nk == k) {
                    plan.values.push((Layer::Files, k.clone(), None));
                }
            }
            for (k, new) in &leaves {
                if current.and_then(|c| c.get(k)).map(|(old, _)| old) != Some(new) {
                    plan.values.push((Layer::Files, k.clone(), Some(new.clone())));
                }
            }
            Ok(plan)
        })
        .await
    }

    /// Sets the JSON Schema for `prefix` ("" for the whole tree): refused
    /// when what is set now does not match it.
    pub async fn set_schema(&self, prefix: &str, schema: Value) -> Result<Revision, Error> {
        key::check_prefix(prefix)?;
        Schema::compile(prefix, &schema)?;
        self.commit(|_| {
            Ok(Plan { schemas: vec![(prefix.to_owned(), Some(schema.clone()))], ..Plan::default() })
        })
        .await
    }

    /// Removes the schema of `prefix`.
    pub async fn remove_schema(&self, prefix: &str) -> Result<Revision, Error> {
        key::check_prefix(prefix)?;
        self.commit(|snapshot| {
            if !snapshot.schemas.contains_key(prefix) {
                return Err(Error::NotFound { what: format!("a schema for {prefix:?}") });
            }
            Ok(Plan { schemas: vec![(prefix.to_owned(), None)], ..Plan::default() })
        })
        .await
    }

    /// Sets `key` of `layer` (and what is under it) back to what it was at
    /// revision `to`, as a new change. Secrets are encrypted again to the
    /// current key.
    pub async fn rollback(&self, layer: &Layer, key: &Key, to: Revision) -> Result<Revision, Error> {
        let _writing = self.inner.writing.read().await;
        let (past, _) = self.state_at(to).await?;
        let keys = self.keys();
        let mut wanted: Vec<(Key, StoredValue)> = Vec::new();
        for (k, stored) in past.get(layer).into_iter().flatten() {
            if k.is_within(key) {
                let mut stored = stored.clone();
                if let Some(cipher) = &stored.secret
                    && !keys.is_current(cipher)
                {
                    stored.secret = Some(keys.encrypt(&keys.decrypt(cipher)?)?);
                }
                wanted.push((k.clone(), stored));
            }
        }
        self.commit(|snapshot| {
            let mut plan = Plan::default();
            let current = snapshot.values.get(layer);
            for (k, _) in current.into_iter().flatten() {
                // What is under the key and not wanted back goes, and so
                // does a value above it (a table replaces a value).
                let above = key.is_within(k) && k != key;
                if (k.is_within(key) && !wanted.iter().any(|(w, _)| w == k)) || (above && !wanted.is_empty())
                {
                    plan.values.push((layer.clone(), k.clone(), None));
                }
            }
            for (k, stored) in &wanted {
                if current.and_then(|c| c.get(k)).map(|(s, _)| s) != Some(stored) {
                    plan.values.push((layer.clone(), k.clone(), Some(stored.clone())));
                }
            }
            if plan.values.is_empty() {
                return Err(Error::NotFound {
                    what: format!("a difference for {key} in {layer} since revision {to}"),
                });
            }
            Ok(plan)
        })
        .await
    }

    /// A new key: every secret is encrypted again to it, in one change;
    /// the old key is kept to read what was recorded before (a workflow's
    /// journal, the history) unless `forget`. Returns the new public key
    /// and how many values were encrypted again.
    pub async fn rekey(&self, forget: bool) -> Result<(String, usize), Error> {
        let _alone = self.inner.writing.write().await;
        let old = self.keys();
        let new = Arc::new(old.rotated()?);
        *self.inner.keys.write().unwrap_or_else(|e| e.into_inner()) = new.clone();
        let count = std::sync::atomic::AtomicUsize::new(0);
        let result = self
            .commit(|snapshot| {
                let mut plan = Plan::default();
                for (layer, entries) in &snapshot.values {
                    for (k, (stored, _)) in entries {
                        if let Some(cipher) = &stored.secret
                            && !new.is_current(cipher)
                        {
                            let value = new.decrypt(cipher)?;
                            let fresh = StoredValue { secret: Some(new.encrypt(&value)?), ..stored.clone() };
                            plan.values.push((layer.clone(), k.clone(), Some(fresh)));
                        }
                    }
                }
                count.store(plan.values.len(), std::sync::atomic::Ordering::Relaxed);
                Ok(plan)
            })
            .await;
        match result {
            Ok(_) => {}
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        if forget {
            let kept = Arc::new(new.forgetting_retired()?);
            *self.inner.keys.write().unwrap_or_else(|e| e.into_inner()) = kept;
        }
        Ok((new.recipient().to_string(), count.into_inner()))
    }

    /// The one write path: `build` plans the change on a snapshot, the new
    /// state is checked against the schemas, and it is committed with its
    /// history record if config has not changed since the snapshot.
    async fn commit(&self, build: impl Fn(&Snapshot) -> Result<Plan, Error>) -> Result<Revision, Error> {
        for _ in 0..ATTEMPTS {
            let snapshot = self.snapshot().await?;
            let mut plan = build(&snapshot)?;
            // The last word on each leaf is the one that counts.
            let mut last: BTreeMap<(Layer, Key), Option<StoredValue>> = BTreeMap::new();
            for (layer, key, stored) in plan.values.drain(..) {
                last.insert((layer, key), stored);
            }
            plan.values = last.into_iter().map(|((layer, key), stored)| (layer, key, stored)).collect();
            if plan.values.is_empty() && plan.schemas.is_empty() {
                return Ok(snapshot.revision);
            }
            // A secret encrypted before a rekey swapped the key is
            // encrypted again to the current one, so that no ciphertext
            // lands that only a key about to be forgotten opens.
            let keys = self.keys();
            for (_, _, stored) in plan.values.iter_mut() {
                if let Some(stored) = stored
                    && let Some(cipher) = &stored.secret
                    && !keys.is_current(cipher)
                {
                    stored.secret = Some(keys.encrypt(&keys.decrypt(cipher)?)?);
                }
            }
            self.check(&snapshot, &plan)?;
            let mut changes = Vec::new();
            let mut txn = Txn::new();
            txn = match &snapshot.head {
                Some((_, revision)) => txn.when(Compare::mod_revision(HEAD, *revision)),
                None => txn.when(Compare::missing(HEAD)),
            };
            let current = |layer: &Layer, key: &Key| {
                snapshot.values.get(layer).and_then(|e| e.get(key)).map(|(s, _)| s.clone())
            };
            for (layer, key, after) in &plan.values {
                let before = current(layer, key);
                if before == *after {
                    continue;
                }
                let store_key = layer.store_key(key);
                txn = match after {
                    Some(stored) => txn.and_then(Op::Put {
                        key: store_key,
                        value: serde_json::to_vec(stored).expect("serialises"),
                        lease: None,
                    }),
                    None => txn.and_then(Op::Delete { key: store_key }),
                };
                changes.push(RecordChange::Value {
                    layer: layer.to_string(),
                    key: key.to_string(),
                    before,
                    after: after.clone(),
                });
            }
            for (prefix, after) in &plan.schemas {
                let before = snapshot.schemas.get(prefix).cloned();
                let store_key = format!("{SCHEMAS}{}", schema_key(prefix));
                txn = match after {
                    Some(schema) => txn.and_then(Op::Put {
                        key: store_key,
                        value: serde_json::to_vec(schema).expect("serialises"),
                        lease: None,
                    }),
                    None => txn.and_then(Op::Delete { key: store_key }),
                };
                changes.push(RecordChange::Schema { prefix: prefix.clone(), before, after: after.clone() });
            }
            if changes.is_empty() {
                return Ok(snapshot.revision);
            }
            let head = snapshot.head.as_ref().map(|(h, _)| h.clone()).unwrap_or_default();
            let at_ms = now_ms();
            let record = Record { at_ms, changes };
            txn = txn
                .and_then(Op::Put {
                    key: HEAD.into(),
                    value: serde_json::to_vec(&head).expect("serialises"),
                    lease: None,
                })
                .and_then(Op::Put {
                    key: format!("{HISTORY}{at_ms:013}-{:016x}", rand::random::<u64>()),
                    value: serde_json::to_vec(&record).expect("serialises"),
                    lease: None,
                });
            let response = self.inner.store.txn(txn).await?;
            if response.succeeded {
                if let Err(error) = self.prune_history().await {
                    tracing::warn!(error = %hearth_store::chain(&error), "Cannot drop old config history.");
                }
                return Ok(response.revision);
            }
        }
        Err(Error::Contended { attempts: ATTEMPTS })
    }

    /// Refuses a plan whose result does not match a schema it touches, in
    /// any view it changes.
    fn check(&self, snapshot: &Snapshot, plan: &Plan) -> Result<(), Error> {
        let mut after = Snapshot {
            revision: snapshot.revision,
            head: None,
            values: snapshot.values.clone(),
            schemas: snapshot.schemas.clone(),
        };
        for (layer, key, stored) in &plan.values {
            let entries = after.values.entry(layer.clone()).or_default();
            match stored {
                Some(s) => entries.insert(key.clone(), (s.clone(), 0)),
                None => entries.remove(key),
            };
        }
        for (prefix, schema) in &plan.schemas {
            match schema {
                Some(s) => after.schemas.insert(prefix.clone(), s.clone()),
                None => after.schemas.remove(prefix),
            };
        }
        let touched_keys: Vec<&Key> = plan.values.iter().map(|(_, k, _)| k).collect();
        let new_schemas: BTreeSet<&str> =
            plan.schemas.iter().filter(|(_, s)| s.is_some()).map(|(p, _)| p.as_str()).collect();
        // Which views change: a scope's layer changes its own view; the
        // shared layers (and a new schema) change every view.
        let mut views: BTreeSet<Scope> = BTreeSet::new();
        let shared =
            !new_schemas.is_empty() || plan.values.iter().any(|(l, _, _)| !matches!(l, Layer::Scope(_)));
        if shared {
            views.insert(Scope::Global);
            for layer in after.values.keys() {
                if let Layer::Scope(scope) = layer {
                    views.insert(scope.clone());
                }
            }
        }
        for (layer, _, _) in &plan.values {
            if let Layer::Scope(scope) = layer {
                views.insert(scope.clone());
            }
        }
        for (prefix, schema) in &after.schemas {
            let relevant = new_schemas.contains(prefix.as_str())
                || touched_keys.iter().any(|k| covers(prefix, k.as_str()) || covers(k.as_str(), prefix));
            if !relevant {
                continue;
            }
            let compiled = Schema::compile(prefix, schema)?;
            for scope in &views {
                let resolved = self.merge(&after, scope, None, true)?;
                if let Some(value) = resolved.at(prefix) {
                    let secrets: Vec<String> = resolved
                        .leaves
                        .iter()
                        .filter(|(_, l)| l.secret)
                        .map(|(k, _)| k.to_string())
                        .collect();
                    compiled.check(&value, &scope.to_string(), &secrets)?;
                }
            }
        }
        Ok(())
    }

    /// Drops the oldest history records beyond [`HISTORY_KEPT`], and notes
    /// up to which revision history is gone.
    async fn prune_history(&self) -> Result<(), Error> {
        let range = self.inner.store.range(HISTORY).await?;
        if range.kvs.len() <= HISTORY_KEPT + HISTORY_KEPT / 10 {
            return Ok(());
        }
        let mut kvs = range.kvs;
        kvs.sort_by_key(|kv| kv.mod_revision);
        let drop = kvs.len() - HISTORY_KEPT;
        let through = kvs[drop - 1].mod_revision;
        let head = self.inner.store.get(HEAD).await?;
        let Some(head_kv) = head else { return Ok(()) };
        let mut state: Head = decode(&head_kv.key, &head_kv.value)?;
        state.pruned_through = state.pruned_through.max(through);
        let mut txn = Txn::new().when(Compare::mod_revision(HEAD, head_kv.mod_revision)).and_then(Op::Put {
            key: HEAD.into(),
            value: serde_json::to_vec(&state).expect("serialises"),
            lease: None,
        });
        for kv in &kvs[..drop] {
            txn = txn.and_then(Op::Delete { key: kv.key.clone() });
        }
        self.inner.store.txn(txn).await?;
        Ok(())
    }

    // -- history ----------------------------------------------------------

    /// The changes to keys under `prefix` (all for ""), newest first, at
    /// most `limit`.
    pub async fn history(&self, prefix: &str, limit: usize) -> Result<Vec<HistoryEntry>, Error> {
        key::check_prefix(prefix)?;
        let (_, records) = self.read(true).await?;
        let mut out = Vec::new();
        for (revision, record) in records.into_iter().rev() {
            let changes: Vec<HistoryChange> = record
                .changes
                .iter()
                .filter(|c| match c {
                    RecordChange::Value { key, .. } => covers(prefix, key),
                    RecordChange::Schema { prefix: p, .. } => covers(prefix, p) || covers(p, prefix),
                })
                .map(shown)
                .collect();
            if !changes.is_empty() {
                out.push(HistoryEntry { revision, at_ms: record.at_ms, changes });
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Every layer's leaves as they were at revision `at`, and the current
    /// revision.
    async fn state_at(
        &self,
        at: Revision,
    ) -> Result<(BTreeMap<Layer, BTreeMap<Key, StoredValue>>, Revision), Error> {
        let (snapshot, records) = self.read(true).await?;
        let pruned = snapshot.head.as_ref().map_or(0, |(head, _)| head.pruned_through);
        if at > snapshot.revision {
            return Err(Error::FutureRevision { requested: at, current: snapshot.revision });
        }
        if at < pruned {
            return Err(Error::HistoryGone { requested: at, oldest: pruned });
        }
        let mut state: BTreeMap<Layer, BTreeMap<Key, StoredValue>> = snapshot
            .values
            .into_iter()
            .map(|(layer, entries)| (layer, entries.into_iter().map(|(k, (s, _))| (k, s)).collect()))
            .collect();
        for (revision, record) in records.iter().rev() {
            if *revision <= at {
                break;
            }
            for change in record.changes.iter().rev() {
                let RecordChange::Value { layer, key, before, .. } = change else { continue };
                let (Ok(layer), Ok(key)) = (layer.parse::<Layer>(), Key::parse(key)) else { continue };
                let entries = state.entry(layer).or_default();
                match before {
                    Some(s) => entries.insert(key, s.clone()),
                    None => entries.remove(&key),
                };
            }
        }
        Ok((state, snapshot.revision))
    }

    /// What differs between revision `from` and `to` (now when `None`),
    /// leaf by leaf, secrets hidden (a secret shows as changed when its
    /// ciphertext did).
    pub async fn diff(
        &self,
        from: Revision,
        to: Option<Revision>,
    ) -> Result<(Revision, Vec<ValueChange>), Error> {
        let (a, now) = self.state_at(from).await?;
        let (b, to) = match to {
            Some(to) => (self.state_at(to).await?.0, to),
            None => (self.state_at(now).await?.0, now),
        };
        let mut out = Vec::new();
        let layers: BTreeSet<&Layer> = a.keys().chain(b.keys()).collect();
        for layer in layers {
            let empty = BTreeMap::new();
            let (x, y) = (a.get(layer).unwrap_or(&empty), b.get(layer).unwrap_or(&empty));
            let keys: BTreeSet<&Key> = x.keys().chain(y.keys()).collect();
            for key in keys {
                let (before, after) = (x.get(key), y.get(key));
                if before != after {
                    out.push(ValueChange::shown(layer.to_string(), key.to_string(), before, after));
                }
            }
        }
        Ok((to, out))
    }

    // -- the loop -----------------------------------------------------------

    /// Follows `config/` and bumps [`Config::changes`], throttled to one bump
    /// per [`THROTTLE`], until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let from = match self.inner.store.revision().await {
            Ok(revision) => revision,
            Err(error) => {
                tracing::error!(error = %hearth_store::chain(&error), "Cannot follow config.");
                return;
            }
        };
        self.inner.changes.send_replace(from);
        let mut follower = Follower::new(self.inner.store.clone(), key::VALUES, from + 1, "config");
        let now = tokio::time::Instant::now();
        let mut last_bump = now.checked_sub(THROTTLE).unwrap_or(now);
        let mut pending: Option<Revision> = None;
        loop {
            let deadline = last_bump + THROTTLE;
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                change = follower.next() => {
                    let revision = match change {
                        hearth_store::Change::Event(event) => event.revision(),
                        hearth_store::Change::Reset(range) => range.revision,
                    };
                    if tokio::time::Instant::now() >= deadline && pending.is_none() {
                        self.inner.changes.send_replace(revision);
                        last_bump = tokio::time::Instant::now();
                    } else {
                        pending = Some(revision);
                    }
                }
                _ = tokio::time::sleep_until(deadline), if pending.is_some() => {
                    if let Some(revision) = pending.take() {
                        self.inner.changes.send_replace(revision);
                        last_bump = tokio::time::Instant::now();
                    }
                }
            }
        }
    }
}

fn shown(change: &RecordChange) -> HistoryChange {
    match change {
        RecordChange::Value { layer, key, before, after } => HistoryChange::Value(ValueChange::shown(
            layer.clone(),
            key.clone(),
            before.as_ref(),
            after.as_ref(),
        )),
        RecordChange::Schema { prefix, before, after } => {
            HistoryChange::Schema { prefix: prefix.clone(), before: before.clone(), after: after.clone() }
        }
    }
}

/// The schema of the whole tree is kept at `config/schemas/*`.
fn schema_key(prefix: &str) -> &str {
    if prefix.is_empty() { "*" } else { prefix }
}

fn schema_prefix(key: &str) -> String {
    if key == "*" { String::new() } else { key.to_owned() }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt { key: key.to_owned(), reason: e.to_string() })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
