//! The [`Monitor`]: the loop that drives the engine, and what the API asks
//! of it. See the crate's doc for the policy.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hearth_alerts::engine::NotifiedAlert;
use hearth_alerts::rules::{Receiver, ReceiverKind};
use hearth_alerts::silence::Matcher;
use hearth_alerts::{EventInput, Labels, Notification, Phase, Rules, Sample, Silence, State, Status};
use hearth_store::{Change, EventKind, Follower, Op, Revision, Store, Txn};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Notify, mpsc, watch};

use hearth_notify::backoff;

use crate::deliver::{Deliver, Failure};
use crate::{Error, GIVE_UP_AFTER, HISTORY_KEPT, builtin, keys, now_ms};

/// Inputs waiting for the loop; more are dropped (and counted).
const INPUT_BACKLOG: usize = 8192;
/// How often state that only observation changed is written.
const PERSIST_EVERY: Duration = Duration::from_secs(1);
/// How often the revision seen is saved when nothing else changed, in
/// milliseconds.
const REVISION_EVERY: u64 = 60_000;
/// Store changes taken before one tick.
const BATCH: usize = 1024;
/// How long one delivery may take before it counts as failed.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// Deliveries in flight at once.
const MAX_IN_FLIGHT: usize = 16;

/// How the service is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where a person sees alerts: the payload's `externalURL`.
    pub external_url: String,
    /// Several hosts share the store, and the loop runs only on the
    /// leader (see the crate's doc, "One service for the cloud").
    pub shared: bool,
}

/// A change a host that does not lead asks of the leader's loop, kept at
/// `alerts/requests/ID` until the leader has applied it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Request {
    Silence(Silence),
    Expire { id: String },
}

/// What is kept at `alerts/state`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Persisted {
    /// The store revision whose events the state has seen.
    pub revision: Revision,
    pub state: State,
}

/// One notification handed to its receiver, or given up on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When it was delivered or given up on.
    pub at: u64,
    /// The notification's id.
    pub id: String,
    pub rule: String,
    pub receiver: String,
    /// `webhook`, `email`, `workflow` or `record`.
    pub kind: String,
    pub status: Status,
    pub group_labels: Labels,
    pub alerts: Vec<NotifiedAlert>,
    /// Attempts it took.
    pub attempts: u32,
    /// Why it was given up on; `None` when it was delivered.
    pub error: Option<String>,
}

/// Which history entries to list.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub rule: Option<String>,
    pub limit: usize,
}

/// What applying a rules file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub revision: Revision,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub kept: Vec<String>,
}

enum Input {
    Log { source: String, line: String, at: u64 },
    Samples { at: u64, samples: Vec<Sample> },
}

/// A notification that failed, waiting for its next attempt.
#[derive(Debug, Clone, Copy)]
struct Retry {
    attempts: u32,
    first_failure: u64,
    next_at: u64,
}

struct Engine {
    /// The person's rules file.
    text: String,
    rules: Arc<Rules>,
    state: State,
    /// The revision whose events `state` has seen.
    revision: Revision,
    /// `state` changed since it was last written.
    dirty: bool,
    last_persist: u64,
    /// The revision last saved.
    saved_revision: Revision,
    /// A notification was acknowledged and not yet saved.
    outbox_unsaved: bool,
    retries: HashMap<String, Retry>,
    in_flight: HashSet<String>,
    history_written: u64,
}

impl Engine {
    /// Puts the rules file `text` (as stored) in force, if it differs from
    /// the one in force: true if it did. One that does not check changes
    /// nothing.
    fn take_rules(&mut self, text: String) -> Result<bool, hearth_alerts::rules::Error> {
        if text == self.text {
            return Ok(false);
        }
        self.rules = Arc::new(Rules::parse(&builtin::merge(&text))?);
        self.text = text;
        Ok(true)
    }
}

struct Inner {
    store: Arc<dyn Store>,
    deliver: Arc<dyn Deliver>,
    options: Options,
    engine: Mutex<Engine>,
    /// Rule edits (read the file, change it, apply) one at a time.
    editing: Mutex<()>,
    wake: Notify,
    inputs: mpsc::Sender<Input>,
    pending: std::sync::Mutex<Option<mpsc::Receiver<Input>>>,
    dropped: AtomicU64,
    /// Bumped whenever something is delivered, for tests and benchmarks.
    delivered: watch::Sender<u64>,
    /// The loop runs here: always alone, only while leading when shared.
    running: AtomicBool,
    /// What the loop writes its state through during a leader's term (the
    /// fenced store, [`Monitor::run_fenced`]); the store otherwise.
    writer: std::sync::Mutex<Option<Arc<dyn Store>>>,
}

/// A cheap-to-clone handle to the alerting service.
#[derive(Clone)]
pub struct Monitor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").field("options", &self.inner.options).finish_non_exhaustive()
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt { key: key.to_owned(), reason: e.to_string() })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("plain data serializes")
}

/// The person's file as TOML text, without empty lists (which TOML would
/// write inline, and which [`builtin::merge`] could not extend).
fn write_file(mut file: toml::Table) -> Result<String, Error> {
    file.retain(|_, v| v.as_array().is_none_or(|a| !a.is_empty()));
    toml::to_string(&file).map_err(|e| Error::Corrupt { key: keys::RULES.into(), reason: e.to_string() })
}

fn kind_name(kind: &ReceiverKind) -> &'static str {
    match kind {
        ReceiverKind::Email { .. } => "email",
        ReceiverKind::Webhook { .. } => "webhook",
        ReceiverKind::Workflow { .. } => "workflow",
        ReceiverKind::Record => "record",
    }
}

impl Monitor {
    /// Loads the rules and the state from the store. A stored rules file
    /// that no longer checks (written by an older version) is logged and
    /// left in the store, and only the built-in rules run until a good one
    /// is applied.
    pub async fn open(
        store: Arc<dyn Store>,
        deliver: Arc<dyn Deliver>,
        options: Options,
    ) -> Result<Monitor, Error> {
        let text = match store.get(keys::RULES).await? {
            Some(kv) => String::from_utf8_lossy(&kv.value).into_owned(),
            None => String::new(),
        };
        let rules = match Rules::parse(&builtin::merge(&text)) {
            Ok(rules) => rules,
            Err(error) => {
                tracing::error!(error = %error, "The stored alert rules do not check; only the built-in rules run. Apply a corrected file with `hearth alert apply`.");
                Rules::parse(&builtin::merge("")).expect("the built-in rules parse")
            }
        };
        let persisted = match store.get(keys::STATE).await? {
            Some(kv) => match decode::<Persisted>(keys::STATE, &kv.value) {
                Ok(persisted) => persisted,
                Err(error) => {
                    // Kept for a person to look at; the service starts afresh
                    // from here rather than not at all.
                    let aside = format!("{}.unreadable-{}", keys::STATE, kv.mod_revision);
                    tracing::error!(error = %error, kept_at = aside, "The saved alert state cannot be read; starting with none.");
                    store.put(&aside, kv.value.clone(), None).await?;
                    let fresh = Persisted { revision: store.revision().await?, state: State::default() };
                    store.put(keys::STATE, encode(&fresh), None).await?;
                    fresh
                }
            },
            // Nothing is written until something matters (a rule applied,
            // an alert seen): a new daemon's store stays empty.
            None => Persisted { revision: store.revision().await?, state: State::default() },
        };
        let (tx, rx) = mpsc::channel(INPUT_BACKLOG);
        Ok(Monitor {
            inner: Arc::new(Inner {
                store,
                deliver,
                options,
                engine: Mutex::new(Engine {
                    text,
                    rules: Arc::new(rules),
                    state: persisted.state,
                    revision: persisted.revision,
                    dirty: false,
                    last_persist: now_ms(),
                    saved_revision: persisted.revision,
                    outbox_unsaved: false,
                    retries: HashMap::new(),
                    in_flight: HashSet::new(),
                    history_written: 0,
                }),
                editing: Mutex::new(()),
                wake: Notify::new(),
                inputs: tx,
                pending: std::sync::Mutex::new(Some(rx)),
                dropped: AtomicU64::new(0),
                delivered: watch::channel(0).0,
                running: AtomicBool::new(false),
                writer: std::sync::Mutex::new(None),
            }),
        })
    }

    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// A line `source` (`app:NAME`, `workflow:NAME`, `machine:NAME`, `service:NAME`) logged. Never blocks:
    /// when the loop is far behind, the line is dropped and counted.
    pub fn log(&self, source: &str, line: &str) {
        if !self.takes_inputs() {
            return;
        }
        let input = Input::Log { source: source.to_owned(), line: line.to_owned(), at: now_ms() };
        if self.inner.inputs.try_send(input).is_err() {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Metric samples taken at `at`.
    pub fn samples(&self, at: u64, samples: Vec<Sample>) {
        if !self.takes_inputs() {
            return;
        }
        if self.inner.inputs.try_send(Input::Samples { at, samples }).is_err() {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the loop here takes log lines and samples: alone, always (a
    /// loop not yet started catches up); shared, while it runs, since only
    /// the leader's loop evaluates.
    fn takes_inputs(&self) -> bool {
        !self.inner.options.shared || self.inner.running.load(Ordering::Relaxed)
    }

    /// Whether this host answers from the store rather than its own loop:
    /// it shares the store and does not lead.
    fn follows(&self) -> bool {
        self.inner.options.shared && !self.inner.running.load(Ordering::Relaxed)
    }

    /// Reads the rules and the state the store holds into the engine: what
    /// a new leader starts from, and what a host that does not lead answers
    /// from. Deliveries under way are forgotten (their notifications stay
    /// in the outbox).
    async fn reload(&self) -> Result<(), Error> {
        let text = match self.inner.store.get(keys::RULES).await? {
            Some(kv) => String::from_utf8_lossy(&kv.value).into_owned(),
            None => String::new(),
        };
        let persisted = match self.inner.store.get(keys::STATE).await? {
            Some(kv) => decode::<Persisted>(keys::STATE, &kv.value)?,
            None => Persisted { revision: self.inner.store.revision().await?, state: State::default() },
        };
        let mut engine = self.inner.engine.lock().await;
        if let Err(error) = engine.take_rules(text) {
            tracing::error!(error = %error, "The stored alert rules do not check; keeping the ones in force.")
        }
        engine.state = persisted.state;
        engine.revision = persisted.revision;
        engine.saved_revision = persisted.revision;
        engine.dirty = false;
        engine.outbox_unsaved = false;
        engine.retries.clear();
        engine.in_flight.clear();
        Ok(())
    }

    /// A follower's copy of the rules and state, fresh from the store.
    async fn refresh(&self) -> Result<(), Error> {
        if self.follows() { self.reload().await } else { Ok(()) }
    }

    /// Hands `request` to the leader's loop.
    async fn ask_leader(&self, id: &str, request: &Request) -> Result<(), Error> {
        self.inner.store.put(&format!("{}{id}", keys::REQUESTS), encode(request), None).await?;
        Ok(())
    }

    /// Applies a follower's request, on the leader; the request goes.
    async fn take_request(&self, engine: &mut Engine, key: &str, value: &[u8]) {
        match decode::<Request>(key, value) {
            Ok(Request::Silence(silence)) => {
                if let Err(error) = engine.state.add_silence(silence) {
                    tracing::warn!(error = error.0, "A silence asked through another host was refused.");
                }
            }
            Ok(Request::Expire { id }) => {
                engine.state.expire_silence(&id, now_ms());
            }
            Err(error) => {
                tracing::warn!(error = %error, "Skipping an unreadable request to the alerting service.")
            }
        }
        engine.dirty = true;
        if let Err(error) = self.persist(engine, None).await {
            tracing::warn!(error = %error, "Cannot save the alert state; the request is kept and taken again.");
            return;
        }
        if let Err(error) = self.writer().delete(key).await {
            tracing::warn!(error = %error, key, "Cannot remove a request already applied; it is harmless when taken again.");
        }
    }

    /// Inputs dropped because the loop was behind.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Changes whenever a notification is delivered.
    pub fn deliveries(&self) -> watch::Receiver<u64> {
        self.inner.delivered.subscribe()
    }

    /// The person's rules file and the rules in force (theirs and the
    /// built-in ones).
    pub async fn rules(&self) -> (String, Arc<Rules>) {
        if let Err(error) = self.refresh().await {
            tracing::warn!(error = %error, "Cannot read the alert rules from the store; answering from the last read.");
        }
        let engine = self.inner.engine.lock().await;
        (engine.text.clone(), engine.rules.clone())
    }

    /// Checks a rules file and, when it is good, puts it in force. A file
    /// that does not check changes nothing and says every problem.
    pub async fn apply(&self, text: &str) -> Result<Applied, Error> {
        let _editing = self.inner.editing.lock().await;
        self.apply_locked(text).await
    }

    async fn apply_locked(&self, text: &str) -> Result<Applied, Error> {
        let rules = Rules::parse(&builtin::merge(text))?;
        let mut engine = self.inner.engine.lock().await;
        let before: HashSet<String> = engine.rules.rules.iter().map(|r| r.name.clone()).collect();
        let revision = self.inner.store.put(keys::RULES, text.as_bytes().to_vec(), None).await?;
        let mut added = Vec::new();
        let mut kept = Vec::new();
        for rule in &rules.rules {
            if before.contains(&rule.name) {
                kept.push(rule.name.clone())
            } else {
                added.push(rule.name.clone())
            }
        }
        let now: HashSet<&String> = rules.rules.iter().map(|r| &r.name).collect();
        let mut removed: Vec<String> = before.iter().filter(|n| !now.contains(n)).cloned().collect();
        removed.sort();
        engine.text = text.to_owned();
        engine.rules = Arc::new(rules);
        // A host that does not lead only writes the file: the leader's
        // loop takes it from the store.
        if !self.follows() {
            let at = now_ms();
            let rules = engine.rules.clone();
            engine.state.evaluate(&rules, at);
            engine.dirty = true;
            self.persist(&mut engine, None).await?;
        }
        drop(engine);
        self.inner.wake.notify_one();
        tracing::info!(added = ?added, removed = ?removed, "Alert rules applied.");
        Ok(Applied { revision, added, removed, kept })
    }

    /// Adds or replaces one rule of the person's file, given as the TOML
    /// of its table (without `[[rule]]`). The rest of the file is written
    /// back as TOML: comments in it are not kept.
    pub async fn set_rule(&self, name: &str, table: &str) -> Result<Applied, Error> {
        let parse = |text: &str, what: &str| {
            text.parse::<toml::Table>()
                .map_err(|e| Error::Rules(hearth_alerts::rules::Error::Parse(format!("{what}: {e}"))))
        };
        let mut rule = parse(table, &format!("rule {name:?}"))?;
        rule.insert("name".into(), toml::Value::String(name.to_owned()));
        let _editing = self.inner.editing.lock().await;
        self.refresh().await?;
        let text = self.inner.engine.lock().await.text.clone();
        let mut file = parse(&text, "the stored rules file")?;
        let rules = file.entry("rule").or_insert_with(|| toml::Value::Array(Vec::new()));
        let Some(rules) = rules.as_array_mut() else {
            return Err(Error::Rules(hearth_alerts::rules::Error::Parse(
                "the stored rules file's `rule` is not a list of tables: apply a corrected file".into(),
            )));
        };
        let named = |v: &toml::Value| v.get("name").and_then(toml::Value::as_str) == Some(name);
        match rules.iter_mut().find(|v| named(v)) {
            Some(existing) => *existing = toml::Value::Table(rule),
            None => rules.push(toml::Value::Table(rule)),
        }
        self.apply_locked(&write_file(file)?).await
    }

    /// Removes one rule of the person's file.
    pub async fn remove_rule(&self, name: &str) -> Result<Applied, Error> {
        let _editing = self.inner.editing.lock().await;
        self.refresh().await?;
        let text = self.inner.engine.lock().await.text.clone();
        let mut file: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            Error::Rules(hearth_alerts::rules::Error::Parse(format!("the stored rules file: {e}")))
        })?;
        let named = |v: &toml::Value| v.get("name").and_then(toml::Value::as_str) == Some(name);
        let found = file.get_mut("rule").and_then(toml::Value::as_array_mut).is_some_and(|rules| {
            let before = rules.len();
            rules.retain(|v| !named(v));
            rules.len() != before
        });
        if !found {
            if builtin::rule_names().any(|n| n == name) {
                return Err(Error::Builtin(format!(
                    "{name:?} is a built-in rule: it cannot be removed, but a rule of the same name replaces it (`notify = []` stops it recording), and `hearth alert silence --match rule={name}` mutes it"
                )));
            }
            return Err(Error::NotFound { what: "rule", name: name.to_owned() });
        }
        self.apply_locked(&write_file(file)?).await
    }

    /// The engine's state as of now: alerts, groups, silences, outbox.
    pub async fn state(&self) -> State {
        if let Err(error) = self.refresh().await {
            tracing::warn!(error = %error, "Cannot read the alert state from the store; answering from the last read.");
        }
        self.inner.engine.lock().await.state.clone()
    }

    /// Whether an alert is muted now, by a silence or an inhibition.
    pub async fn muted(&self) -> HashSet<String> {
        if let Err(error) = self.refresh().await {
            tracing::warn!(error = %error, "Cannot read the alert state from the store; answering from the last read.");
        }
        let engine = self.inner.engine.lock().await;
        let now = now_ms();
        engine
            .state
            .alerts
            .iter()
            .filter(|(fp, a)| a.phase != Phase::Inactive && engine.state.muted(&engine.rules, fp, a, now))
            .map(|(fp, _)| fp.clone())
            .collect()
    }

    /// Adds a silence from written matchers (`rule=disk`, `app=~"web-.*"`),
    /// from now for `duration`.
    pub async fn silence(
        &self,
        matchers: &[String],
        duration: Duration,
        created_by: &str,
        comment: &str,
    ) -> Result<Silence, Error> {
        let matchers = matchers
            .iter()
            .map(|m| Matcher::parse(m).map_err(|e| Error::Silence(format!("{m:?}: {}", e.0))))
            .collect::<Result<Vec<_>, _>>()?;
        let now = now_ms();
        let duration = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let silence = Silence {
            id: format!("{:016x}", rand::random::<u64>()),
            matchers,
            starts_at: now,
            ends_at: now.saturating_add(duration),
            created_by: created_by.to_owned(),
            comment: comment.to_owned(),
        };
        if self.follows() {
            // Checked here as the leader will, then asked of it.
            State::default().add_silence(silence.clone()).map_err(|e| Error::Silence(e.0))?;
            self.ask_leader(&silence.id, &Request::Silence(silence.clone())).await?;
            return Ok(silence);
        }
        let mut engine = self.inner.engine.lock().await;
        engine.state.add_silence(silence.clone()).map_err(|e| Error::Silence(e.0))?;
        self.persist(&mut engine, None).await?;
        drop(engine);
        self.inner.wake.notify_one();
        Ok(silence)
    }

    /// Ends a silence now.
    pub async fn expire_silence(&self, id: &str) -> Result<Silence, Error> {
        if self.follows() {
            self.reload().await?;
            let mut state = self.inner.engine.lock().await.state.clone();
            if !state.expire_silence(id, now_ms()) {
                return Err(Error::NotFound { what: "silence", name: id.to_owned() });
            }
            self.ask_leader(&format!("expire-{id}"), &Request::Expire { id: id.to_owned() }).await?;
            return Ok(state.silences[id].clone());
        }
        let mut engine = self.inner.engine.lock().await;
        if !engine.state.expire_silence(id, now_ms()) {
            return Err(Error::NotFound { what: "silence", name: id.to_owned() });
        }
        let silence = engine.state.silences[id].clone();
        self.persist(&mut engine, None).await?;
        drop(engine);
        self.inner.wake.notify_one();
        Ok(silence)
    }

    /// The alert history, newest first.
    pub async fn history(&self, query: &HistoryQuery) -> Result<Vec<HistoryEntry>, Error> {
        let range = self.inner.store.range(keys::HISTORY).await?;
        let mut entries = Vec::new();
        for kv in range.kvs.iter().rev() {
            let entry: HistoryEntry = decode(&kv.key, &kv.value)?;
            if query.rule.as_ref().is_some_and(|r| *r != entry.rule) {
                continue;
            }
            entries.push(entry);
            if entries.len() >= query.limit.max(1) {
                break;
            }
        }
        Ok(entries)
    }

    /// Writes the state (with `history`, in the same transaction).
    async fn persist(&self, engine: &mut Engine, history: Option<&HistoryEntry>) -> Result<(), Error> {
        // One before the last revision seen: a transaction's events share
        // a revision, and a restart reads that transaction again whole.
        let persisted =
            Persisted { revision: engine.revision.saturating_sub(1), state: engine.state.clone() };
        let mut txn =
            Txn::new().and_then(Op::Put { key: keys::STATE.into(), value: encode(&persisted), lease: None });
        if let Some(entry) = history {
            let key = format!("{}{:015}-{}", keys::HISTORY, entry.at, entry.id);
            txn = txn.and_then(Op::Put { key, value: encode(entry), lease: None });
        }
        self.writer().txn(txn).await?;
        engine.dirty = false;
        engine.outbox_unsaved = false;
        engine.last_persist = now_ms();
        engine.saved_revision = persisted.revision;
        if history.is_some() {
            engine.history_written += 1;
            if engine.history_written % 100 == 1 {
                self.prune_history().await;
            }
        }
        Ok(())
    }

    /// Keeps the newest [`HISTORY_KEPT`] history entries.
    async fn prune_history(&self) {
        if let Err(error) = hearth_store::keep_newest(&*self.inner.store, keys::HISTORY, HISTORY_KEPT).await {
            tracing::warn!(error = %error, "Cannot prune the alert history.");
        }
    }

    /// Runs until `stop`: follows the store from the revision the state
    /// has seen, takes inputs, and drives the engine.
    /// The store the state is written through: fenced by the leader's term
    /// while [`Monitor::run_fenced`] runs.
    fn writer(&self) -> Arc<dyn Store> {
        let writer = self.inner.writer.lock().unwrap_or_else(|e| e.into_inner());
        writer.clone().unwrap_or_else(|| self.inner.store.clone())
    }

    /// As [`Monitor::run`], the state written through `writer`: the store
    /// fenced by this host's term as leader, so that a leader deposed
    /// without knowing it saves nothing over its successor's state.
    pub async fn run_fenced(self, writer: Arc<dyn Store>, stop: watch::Receiver<bool>) {
        *self.inner.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(writer);
        self.clone().run(stop).await;
        *self.inner.writer.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let Some(mut inputs) = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            tracing::error!("The alerting service was started twice.");
            return;
        };
        if self.inner.options.shared {
            // A new leader goes on from where the last one saved, and takes
            // what other hosts asked meanwhile.
            while let Err(error) = self.reload().await {
                tracing::warn!(error = %error, "Cannot read the alert state to lead; retrying in a second.");
                tokio::select! {
                    _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                        *self.inner.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(inputs);
                        return;
                    }
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            while inputs.try_recv().is_ok() {}
            match self.inner.store.range(keys::REQUESTS).await {
                Ok(range) => {
                    let mut engine = self.inner.engine.lock().await;
                    for kv in &range.kvs {
                        self.take_request(&mut engine, &kv.key, &kv.value).await;
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %error, "Cannot read the requests other hosts left; they wait.")
                }
            }
        }
        self.inner.running.store(true, Ordering::Relaxed);
        let from = self.inner.engine.lock().await.revision + 1;
        let mut changes = Follower::new(self.inner.store.clone(), "", from, "Alerts");
        let (results_tx, mut results) = mpsc::unbounded_channel::<(String, Result<(), Failure>)>();
        let undelivered = self.inner.engine.lock().await.state.undelivered().len();
        if undelivered > 0 {
            tracing::info!(undelivered, "Delivering the notifications a restart interrupted.");
        }
        let mut wake_at: Option<u64> = Some(now_ms());
        loop {
            let sleep = wake_at
                .map_or(Duration::from_secs(3600), |at| Duration::from_millis(at.saturating_sub(now_ms())));
            tokio::select! {
                _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
                change = changes.next() => self.observe_change(change).await,
                Some(input) = inputs.recv() => self.observe_input(input).await,
                Some((id, result)) = results.recv() => self.finish(&id, result).await,
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(sleep) => {}
            }
            // What else is ready is taken before one tick: a burst of
            // writes costs a few ticks, not one each, and a transaction's
            // events are seen together.
            for _ in 0..BATCH {
                let Some(change) = futures::FutureExt::now_or_never(changes.next()) else { break };
                self.observe_change(change).await;
            }
            while let Ok(input) = inputs.try_recv() {
                self.observe_input(input).await;
            }
            wake_at = self.tick(&results_tx).await;
        }
        self.inner.running.store(false, Ordering::Relaxed);
        let mut engine = self.inner.engine.lock().await;
        if engine.dirty
            && let Err(error) = self.persist(&mut engine, None).await
        {
            tracing::warn!(error = %error, "Cannot save the alert state at shutdown.");
        }
        drop(engine);
        // The next term's loop takes them up.
        *self.inner.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(inputs);
    }

    async fn observe_change(&self, change: Change) {
        let mut engine = self.inner.engine.lock().await;
        match change {
            Change::Event(event) => {
                engine.revision = engine.revision.max(event.revision());
                let key = event.kv.key.as_str();
                if self.inner.options.shared {
                    // What other hosts asked, and a rules file they applied.
                    if key.starts_with(keys::REQUESTS) && event.kind == EventKind::Put {
                        let value = event.kv.value.clone();
                        let key = key.to_owned();
                        self.take_request(&mut engine, &key, &value).await;
                        return;
                    }
                    if key == keys::RULES && event.kind == EventKind::Put {
                        let text = String::from_utf8_lossy(&event.kv.value).into_owned();
                        match engine.take_rules(text) {
                            Ok(false) => {}
                            Ok(true) => {
                                tracing::info!("Alert rules applied through another host.");
                                let (rules, at) = (engine.rules.clone(), now_ms());
                                engine.state.evaluate(&rules, at);
                                engine.dirty = true;
                            }
                            Err(error) => {
                                tracing::error!(error = %error, "Alert rules written through another host do not check; keeping the ones in force.")
                            }
                        }
                        return;
                    }
                }
                // The service's own state and rules reach no rule, ever: a
                // rule on them would fire on every save. Nor does hearth's
                // own plumbing (components' bytes shared between hosts,
                // a megabyte a change), as to every reader of changes.
                if key == keys::STATE
                    || key == keys::RULES
                    || key.starts_with(keys::REQUESTS)
                    || hearth_triggers::private::is_internal(key)
                {
                    return;
                }
                let rules = engine.rules.clone();
                let wanted = rules.rules.iter().any(|r| match &r.input {
                    hearth_alerts::rules::Input::Event(e) => match &e.pattern.key {
                        hearth_alerts::pattern::KeyMatch::Prefix(prefix) => key.starts_with(prefix.as_str()),
                        hearth_alerts::pattern::KeyMatch::Exact(exact) => key == exact,
                    },
                    _ => false,
                });
                if !wanted {
                    return;
                }
                let mut input = match event.kind {
                    EventKind::Put => EventInput::put(key, &event.kv.value),
                    EventKind::Delete => EventInput::delete(key),
                };
                if let Some(rule) = crate::caused_by(key) {
                    mark(&mut input, rule);
                } else if key.starts_with(keys::HISTORY)
                    && let Some(rule) =
                        input.value.as_ref().and_then(|v| v.get("rule")).and_then(|r| r.as_str())
                {
                    // A history entry is the notification's own effect.
                    let rule = rule.to_owned();
                    mark(&mut input, &rule);
                }
                let seen = rules.rules.iter().any(|r| match &r.input {
                    hearth_alerts::rules::Input::Event(e) => {
                        hearth_alerts::pattern::in_scope(&e.pattern, &input)
                    }
                    _ => false,
                });
                if seen {
                    engine.state.observe_event(&rules, &input, now_ms());
                    engine.dirty = true;
                }
            }
            Change::Reset(range) => {
                tracing::warn!(
                    revision = range.revision,
                    "Store changes were compacted before the alerting service saw them; event rules missed them."
                );
                engine.revision = range.revision;
            }
        }
    }

    async fn observe_input(&self, input: Input) {
        let mut engine = self.inner.engine.lock().await;
        let rules = engine.rules.clone();
        match input {
            Input::Log { source, line, at } => {
                let counts = rules.rules.iter().any(|r| match &r.input {
                    hearth_alerts::rules::Input::Log(l) => l.counts(&source, &line),
                    _ => false,
                });
                if counts {
                    engine.state.observe_log(&rules, &source, &line, at);
                    engine.dirty = true;
                }
            }
            Input::Samples { at, samples } => {
                for sample in &samples {
                    let read = rules.rules.iter().any(|r| match &r.input {
                        hearth_alerts::rules::Input::Metric(m) => m.name == sample.name,
                        _ => false,
                    });
                    if read {
                        engine.state.observe_sample(&rules, sample, at);
                        engine.dirty = true;
                    }
                }
            }
        }
    }

    /// Evaluates, plans, acknowledges and persists, then starts the
    /// deliveries that are due. Returns when to come back.
    async fn tick(&self, results: &mpsc::UnboundedSender<(String, Result<(), Failure>)>) -> Option<u64> {
        let mut engine = self.inner.engine.lock().await;
        let now = now_ms();
        let rules = engine.rules.clone();
        engine.state.evaluate(&rules, now);
        let plan = engine.state.plan(&rules, now);
        let mut acknowledged = false;
        for notification in &plan.notifications {
            acknowledged |= engine.state.acknowledge(notification);
        }
        let mut wake = plan.next_wake;
        // An acknowledged notification is saved before anything is sent.
        engine.dirty |= acknowledged;
        engine.outbox_unsaved |= acknowledged;
        // The revision seen is saved now and then even when nothing else
        // changed, so that a restart does not read far back.
        let stale =
            engine.revision > engine.saved_revision + 1 && now >= engine.last_persist + REVISION_EVERY;
        let due_persist = (engine.dirty || stale)
            && (acknowledged || stale || now >= engine.last_persist + PERSIST_EVERY.as_millis() as u64);
        if due_persist && let Err(error) = self.persist(&mut engine, None).await {
            tracing::warn!(error = %error, "Cannot save the alert state; trying again in a second.");
            return Some(now + 1000);
        }
        if engine.outbox_unsaved {
            // A save failed after an acknowledge: nothing is sent until
            // the outbox is saved.
            engine.dirty = true;
            return Some(now + 1000);
        }
        if engine.dirty {
            wake = Some(wake.map_or(engine.last_persist + 1000, |w| w.min(engine.last_persist + 1000)));
        }
        // Only what is saved in the outbox is delivered.
        let outbox: Vec<Notification> = engine.state.undelivered().to_vec();
        // A group's notifications reach its receiver in order: none starts
        // while an earlier one of its group is still out.
        let mut waiting_groups: HashSet<String> = HashSet::new();
        for notification in outbox {
            if engine.in_flight.len() >= MAX_IN_FLIGHT {
                break;
            }
            if waiting_groups.contains(&notification.group_id) {
                continue;
            }
            if engine.in_flight.contains(&notification.id) {
                waiting_groups.insert(notification.group_id.clone());
                continue;
            }
            if let Some(retry) = engine.retries.get(&notification.id)
                && retry.next_at > now
            {
                wake = Some(wake.map_or(retry.next_at, |w| w.min(retry.next_at)));
                waiting_groups.insert(notification.group_id.clone());
                continue;
            }
            waiting_groups.insert(notification.group_id.clone());
            let Some(receiver) = rules.receiver(&notification.receiver).cloned() else {
                let failure = Failure::permanent(format!(
                    "its receiver {:?} is no longer in the rules",
                    notification.receiver
                ));
                let _ = results.send((notification.id.clone(), Err(failure)));
                engine.in_flight.insert(notification.id.clone());
                continue;
            };
            engine.in_flight.insert(notification.id.clone());
            if receiver.kind == ReceiverKind::Record {
                let _ = results.send((notification.id.clone(), Ok(())));
                continue;
            }
            let (deliver, results) = (self.inner.deliver.clone(), results.clone());
            let id = notification.id.clone();
            let task = tokio::spawn(async move {
                tokio::time::timeout(DELIVERY_TIMEOUT, deliver.deliver(&receiver, &notification))
                    .await
                    .unwrap_or_else(|_| Err(Failure::retry("the receiver did not answer within 2 minutes")))
            });
            // A delivery that panicked still reports, so its id leaves
            // `in_flight`.
            tokio::spawn(async move {
                let result = task.await.unwrap_or_else(|e| {
                    Err(Failure::retry(format!("the delivery stopped unexpectedly: {e}")))
                });
                let _ = results.send((id, result));
            });
        }
        wake
    }

    /// A delivery ended: out of the outbox and into the history, or
    /// scheduled again.
    async fn finish(&self, id: &str, result: Result<(), Failure>) {
        let mut engine = self.inner.engine.lock().await;
        engine.in_flight.remove(id);
        let Some(notification) = engine.state.undelivered().iter().find(|n| n.id == id).cloned() else {
            return;
        };
        let now = now_ms();
        let retry = engine.retries.get(id).copied();
        let attempts = retry.map_or(1, |r| r.attempts + 1);
        let error = match result {
            Ok(()) => None,
            Err(failure) => {
                let first_failure = retry.map_or(now, |r| r.first_failure);
                let give_up = now.saturating_sub(first_failure) >= GIVE_UP_AFTER.as_millis() as u64;
                if failure.retryable && !give_up {
                    let next_at = now + u64::try_from(backoff(attempts).as_millis()).unwrap_or(u64::MAX);
                    tracing::warn!(
                        notification = id,
                        receiver = notification.receiver,
                        attempts,
                        error = failure.message,
                        "A notification was not delivered; retrying."
                    );
                    engine.retries.insert(id.to_owned(), Retry { attempts, first_failure, next_at });
                    return;
                }
                tracing::error!(
                    notification = id,
                    receiver = notification.receiver,
                    attempts,
                    error = failure.message,
                    "A notification was given up on."
                );
                Some(failure.message)
            }
        };
        engine.retries.remove(id);
        engine.state.delivered(id);
        let rules = engine.rules.clone();
        let kind = rules.receiver(&notification.receiver).map_or("gone", |r| kind_name(&r.kind));
        let recorded = !(kind == "record" && notification.status == Status::Resolved && error.is_none());
        let entry = HistoryEntry {
            at: now,
            id: id.to_owned(),
            rule: notification.rule.clone(),
            receiver: notification.receiver.clone(),
            kind: kind.to_owned(),
            status: notification.status,
            group_labels: notification.group_labels.clone(),
            alerts: notification.alerts.clone(),
            attempts,
            error,
        };
        engine.dirty = true;
        if let Err(error) = self.persist(&mut engine, recorded.then_some(&entry)).await {
            // The outbox in the store still holds it: after a restart it is
            // delivered again under the same id, which receivers dedupe.
            tracing::warn!(error = %error, notification = id, "Cannot save a delivery.");
        }
        drop(engine);
        self.inner.delivered.send_modify(|n| *n += 1);
    }
}

/// Marks `input` as caused by `rule`'s notification, for the engine's
/// self-trigger guard.
fn mark(input: &mut EventInput, rule: &str) {
    let marker = serde_json::json!({ "rule": rule });
    match &mut input.value {
        Some(serde_json::Value::Object(map)) => {
            map.insert(hearth_alerts::pattern::MARKER.to_owned(), marker);
        }
        other => {
            let value = other.take().unwrap_or(serde_json::Value::Null);
            *other = Some(serde_json::json!({ "value": value, hearth_alerts::pattern::MARKER: marker }));
        }
    }
}

/// A receiver by kind, for listings.
pub fn receiver_kind(receiver: &Receiver) -> &'static str {
    kind_name(&receiver.kind)
}
