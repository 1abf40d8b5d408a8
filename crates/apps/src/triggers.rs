//! What calls an app besides a client: cron schedules and changes in
//! hearth's store call one of its routes, and webhooks put a signature check
//! in front of one. Declared in `hearth.toml`, or added and removed through
//! the API (`hearth app trigger add`), which keeps them apart from the
//! app's versions so a redeploy does not drop them:
//!
//! ```toml
//! [[cron]]
//! schedule = "*/5 * * * *"     # five fields, or six with seconds first; @daily...
//! timezone = "Europe/Paris"    # default UTC
//! path = "/tasks/cleanup"      # the route called: POST, default "/"
//! body = '{"why": "cron"}'     # default empty
//!
//! [[event]]
//! prefix = "machines/"         # a call per change in hearth's store under it
//! kinds = ["put"]              # default both put and delete
//! path = "/on-machine"         # POSTed {"kind", "key", "value", "revision"}
//!
//! [[webhook]]
//! path = "/github"             # deliveries under this path: once per Idempotency-Key,
//! secret = "…"                 # and, with a secret, signed: X-Hearth-Signature: sha256=HMAC(body)
//! ```
//!
//! A webhook delivery with an `Idempotency-Key` header reaches the app once:
//! the key is claimed in the store (`apps/deliveries/NAME/HASH`, kept a day)
//! before the app runs, and a redelivery is answered with the first
//! answer's status, marked `X-Hearth-Duplicate: true`. An answer of 500 or
//! more forgets the key, so the sender's retry is handled again.
//!
//! Calls made by a trigger carry `X-Hearth-Trigger: cron|event`, the
//! trigger's id in `X-Hearth-Trigger-Id` and, from cron, the firing's time
//! (Unix milliseconds) in `X-Hearth-Trigger-Time`; they run under the app's limits like any
//! request, and show in `hearth app logs`.
//!
//! **Cron fires at most once per firing.** The firing is recorded in the
//! store (`apps/cron/NAME/ID`) before the app is called, so a restart never
//! repeats one; a crash between the two loses that one call. Firings missed
//! while hearth was down collapse into one when it comes back (see
//! [`hearth_triggers::due`]). Workflows, which are durable, get exactly once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use hearth_store::{EventKind, Store};
use hearth_triggers::Schedule;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::record::{self, App, Route};
use crate::service::Apps;
use crate::{Error, chain, now_ms};

/// Triggers added through the API: `apps/triggers/NAME/ID`.
pub const TRIGGERS: &str = "apps/triggers/";
/// When each cron trigger last fired: `apps/cron/NAME/ID`.
pub const CRON_STATE: &str = "apps/cron/";

/// Largest body a cron trigger sends.
const MAX_BODY: usize = 64 << 10;

/// A cron schedule that calls one of the app's routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cron {
    pub schedule: String,
    #[serde(default = "utc")]
    pub timezone: String,
    /// The route called, with POST.
    #[serde(default = "root")]
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
}

/// Changes in hearth's store under a prefix, each POSTed to a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub prefix: String,
    /// `put`, `delete`; empty means both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    #[serde(default = "root")]
    pub path: String,
}

/// A route that takes deliveries: signed, if it has a secret, and handled
/// once per `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub path: String,
    /// Requests must carry `X-Hearth-Signature: sha256=HMAC-SHA256(body)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

fn utc() -> String {
    "UTC".into()
}

fn root() -> String {
    "/".into()
}

/// One trigger, of any kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Spec {
    Cron(Cron),
    Event(Event),
    Webhook(Webhook),
}

impl Spec {
    /// Checks the trigger, so that a bad one is refused when it is declared
    /// rather than failing when it fires.
    pub fn validate(&self) -> Result<(), Error> {
        match self {
            Spec::Cron(c) => {
                Schedule::parse(&c.schedule, &c.timezone).map_err(Error::Manifest)?;
                check_path("cron", &c.path)?;
                if c.body.len() > MAX_BODY {
                    return Err(Error::Manifest(format!(
                        "the cron body is {} bytes; keep it under {} KiB",
                        c.body.len(),
                        MAX_BODY >> 10
                    )));
                }
            }
            Spec::Event(e) => {
                if e.prefix.is_empty() || e.prefix.starts_with("apps/") {
                    return Err(Error::Manifest(format!(
                        "event prefix {:?} is not allowed: apps cannot trigger on apps' own records and data \
                         (a key-value write would call the app again); name a prefix such as \"machines/\"",
                        e.prefix
                    )));
                }
                if let Some(k) = e.kinds.iter().find(|k| *k != "put" && *k != "delete") {
                    return Err(Error::Manifest(format!(
                        "event kind {k:?} is not one of \"put\", \"delete\""
                    )));
                }
                check_path("event", &e.path)?;
            }
            Spec::Webhook(w) => {
                check_path("webhook", &w.path)?;
                if w.secret.as_deref() == Some("") {
                    return Err(Error::Manifest(format!(
                        "webhook {:?} has an empty secret; remove it or set one",
                        w.path
                    )));
                }
            }
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        match self {
            Spec::Cron(_) => "cron",
            Spec::Event(_) => "event",
            Spec::Webhook(_) => "webhook",
        }
    }
}

fn check_path(what: &str, path: &str) -> Result<(), Error> {
    let ok = path.starts_with('/')
        && path.len() <= 1024
        && !path.contains('#')
        && path.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(Error::Manifest(format!(
            "{what} path {path:?} is not valid: write a route path such as \"/tasks/cleanup\" (starting with /, \
             no spaces or fragment)"
        )))
    }
}

/// Checks a manifest's triggers together: each one, and no two webhooks on
/// one path.
pub(crate) fn validate_all(specs: &[Spec]) -> Result<(), Error> {
    let mut paths = std::collections::HashSet::new();
    for spec in specs {
        spec.validate()?;
        if let Spec::Webhook(w) = spec
            && !paths.insert(w.path.trim_end_matches('/'))
        {
            return Err(Error::Manifest(format!("two webhooks have the path {:?}", w.path)));
        }
    }
    Ok(())
}

/// A trigger as listed: where it came from, and what it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// `cron-0`, `event-1`, `webhook-0` for those of the active version's
    /// manifest (by kind and position); `t-HEX` for those added by API.
    pub id: String,
    /// `manifest` or `api`.
    pub source: String,
    #[serde(flatten)]
    pub spec: Spec,
    /// Milliseconds since the Unix epoch; the version's for a manifest's.
    pub created_at: u64,
}

/// An added trigger, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    id: String,
    spec: Spec,
    created_at: u64,
}

/// When a cron trigger last fired, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CronState {
    schedule: String,
    timezone: String,
    last: u64,
}

fn trigger_prefix(app: &str) -> String {
    format!("{TRIGGERS}{app}/")
}

/// The manifest's triggers of `app`'s active version, with their ids.
fn manifest_triggers(app: &App) -> Vec<Trigger> {
    let Some(version) = app.active_version() else { return Vec::new() };
    let mut counts: HashMap<&str, usize> = HashMap::new();
    version
        .manifest
        .triggers()
        .into_iter()
        .map(|spec| {
            let n = counts.entry(spec.kind()).or_default();
            let id = format!("{}-{n}", spec.kind());
            *n += 1;
            Trigger { id, source: "manifest".into(), spec, created_at: version.created_at }
        })
        .collect()
}

impl Apps {
    /// Every trigger of `name`: its active version's, then those added.
    pub async fn triggers(&self, name: &str) -> Result<Vec<Trigger>, Error> {
        record::validate_name(name)?;
        let (app, _) = self.find(name).await?.ok_or_else(|| Error::NotFound(name.to_owned()))?;
        let mut all = manifest_triggers(&app);
        all.extend(self.added_triggers(name).await?);
        Ok(all)
    }

    async fn added_triggers(&self, name: &str) -> Result<Vec<Trigger>, Error> {
        let prefix = trigger_prefix(name);
        let range = self.store().range(&prefix).await?;
        let mut out = Vec::with_capacity(range.kvs.len());
        for kv in range.kvs {
            let stored: Stored =
                serde_json::from_slice(&kv.value).map_err(|e| Error::Corrupt(name.to_owned(), e))?;
            out.push(Trigger {
                id: stored.id,
                source: "api".into(),
                spec: stored.spec,
                created_at: stored.created_at,
            });
        }
        Ok(out)
    }

    /// Adds a trigger to a deployed app; it stays across redeploys until
    /// removed.
    pub async fn add_trigger(&self, name: &str, spec: Spec) -> Result<Trigger, Error> {
        record::validate_name(name)?;
        spec.validate()?;
        let existing = self.triggers(name).await?;
        if let Spec::Webhook(w) = &spec
            && let Some(other) = existing.iter().find(|t| {
                matches!(&t.spec, Spec::Webhook(o) if o.path.trim_end_matches('/') == w.path.trim_end_matches('/'))
            })
        {
            return Err(Error::Invalid(format!(
                "app {name:?} already has a webhook on {:?} ({}); remove it first",
                w.path, other.id
            )));
        }
        let created_at = now_ms();
        let id = format!("t-{:08x}", rand::random::<u32>());
        let stored = Stored { id: id.clone(), spec: spec.clone(), created_at };
        let value = serde_json::to_vec(&stored).map_err(|e| Error::Internal(e.to_string()))?;
        self.store().put(&format!("{}{id}", trigger_prefix(name)), value, None).await?;
        self.refresh_guards().await;
        self.note(name, format!("Added the {} trigger {id}.", spec.kind()));
        Ok(Trigger { id, source: "api".into(), spec, created_at })
    }

    /// Removes a trigger added through the API. A manifest's triggers go
    /// with a redeploy that no longer declares them.
    pub async fn remove_trigger(&self, name: &str, id: &str) -> Result<(), Error> {
        record::validate_name(name)?;
        let all = self.triggers(name).await?;
        match all.iter().find(|t| t.id == id) {
            None => {
                let ids: Vec<&str> = all.iter().map(|t| t.id.as_str()).collect();
                return Err(Error::TriggerNotFound {
                    app: name.to_owned(),
                    id: id.to_owned(),
                    ids: ids.join(", "),
                });
            }
            Some(t) if t.source == "manifest" => {
                return Err(Error::Invalid(format!(
                    "trigger {id} of app {name:?} comes from its hearth.toml: remove it there and deploy again"
                )));
            }
            Some(_) => {}
        }
        let store = self.store();
        store.delete(&format!("{}{id}", trigger_prefix(name))).await?;
        store.delete(&format!("{CRON_STATE}{name}/{id}")).await?;
        self.refresh_guards().await;
        Ok(())
    }

    /// Deletes what an app's triggers keep in the store (on `app rm`).
    pub(crate) async fn delete_triggers(&self, name: &str) -> Result<(), Error> {
        let txn = hearth_store::Txn::new()
            .and_then(hearth_store::Op::DeletePrefix { prefix: trigger_prefix(name) })
            .and_then(hearth_store::Op::DeletePrefix { prefix: format!("{CRON_STATE}{name}/") })
            .and_then(hearth_store::Op::DeletePrefix { prefix: format!("{DELIVERIES}{name}/") });
        self.store().txn(txn).await?;
        Ok(())
    }

    /// Every app's triggers, by app, read in one pass.
    async fn all_triggers(&self) -> Result<Vec<(App, Vec<Trigger>)>, Error> {
        let store = self.store();
        let records = store.range(record::RECORDS).await?;
        let added = store.range(TRIGGERS).await?;
        let mut by_app: HashMap<String, Vec<Trigger>> = HashMap::new();
        for kv in added.kvs {
            let Some(rest) = kv.key.strip_prefix(TRIGGERS) else { continue };
            let Some((app, _)) = rest.split_once('/') else { continue };
            match serde_json::from_slice::<Stored>(&kv.value) {
                Ok(s) => by_app.entry(app.to_owned()).or_default().push(Trigger {
                    id: s.id,
                    source: "api".into(),
                    spec: s.spec,
                    created_at: s.created_at,
                }),
                Err(e) => tracing::warn!(key = kv.key, error = %e, "An unreadable app trigger; skipped."),
            }
        }
        let mut out = Vec::with_capacity(records.kvs.len());
        for kv in records.kvs {
            let app: App = match serde_json::from_slice(&kv.value) {
                Ok(app) => app,
                Err(e) => {
                    tracing::warn!(key = kv.key, error = %e, "An unreadable app record; its triggers are skipped.");
                    continue;
                }
            };
            let mut triggers = manifest_triggers(&app);
            triggers.extend(by_app.remove(&app.name).unwrap_or_default());
            out.push((app, triggers));
        }
        Ok(out)
    }

    /// Rebuilds the signature checks the ingress applies (webhooks).
    pub(crate) async fn refresh_guards(&self) {
        let all = match self.all_triggers().await {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!(error = %chain(&e), "Cannot read the apps' webhooks; keeping the old ones.");
                return;
            }
        };
        let mut guards: HashMap<String, Vec<Guard>> = HashMap::new();
        for (app, triggers) in all {
            for t in triggers {
                if let Spec::Webhook(w) = t.spec {
                    guards
                        .entry(app.name.clone())
                        .or_default()
                        .push(Guard { path: w.path, secret: w.secret });
                }
            }
        }
        self.inner.guards.store(Arc::new(guards));
    }

    /// A line from hearth in the app's log, under the version it serves.
    fn note(&self, name: &str, text: String) {
        let version = self.serving(name).map_or(0, |l| l.ctx.version);
        self.log(name).push(version, crate::LogStream::Hearth, text);
    }

    /// Calls `path` of `name`'s serving version, as a trigger, and returns
    /// the response's status (`None` when the app is not serving).
    async fn call(
        &self,
        name: &str,
        trigger: &Trigger,
        path: &str,
        body: Bytes,
        content_type: &str,
        firing: Option<u64>,
    ) -> Option<u16> {
        let loaded = self.serving(name)?;
        let host = Route::default_for(name, &self.inner.options.domain).host;
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("http://{host}{path}"))
            .header(http::header::HOST, host)
            .header(http::header::CONTENT_TYPE, content_type)
            .header("x-hearth-trigger", trigger.spec.kind())
            .header("x-hearth-trigger-id", trigger.id.as_str());
        let request = match firing {
            Some(ms) => request.header("x-hearth-trigger-time", ms),
            None => request,
        };
        let request = request.body(crate::ingress::full_body(body)).ok()?;
        let response = crate::ingress::run(self, loaded, request).await;
        Some(response.status().as_u16())
    }
}

/// Deliveries to webhooks, by `Idempotency-Key`: `apps/deliveries/NAME/HASH`,
/// kept about a day.
pub const DELIVERIES: &str = "apps/deliveries/";
/// How long a delivery is remembered: a lease of 25 hours, shared by the
/// deliveries of an hour, so each is kept 24 to 25 hours.
const DELIVERY_TTL: Duration = Duration::from_secs(25 * 3600);
const DELIVERY_LEASE_REUSE: Duration = Duration::from_secs(3600);

/// What became of a delivery's `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// First time: handle it, then [`Apps::settle_delivery`] the key.
    New(String),
    /// Handled before; the app answered with this status.
    Done(u16),
    /// Being handled right now.
    InFlight,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Delivery {
    /// 0 while the app handles it.
    status: u16,
    at: u64,
}

impl Apps {
    /// Claims a delivery's key before the app sees it, so two deliveries
    /// with one key never both reach the app.
    pub(crate) async fn claim_delivery(&self, app: &str, path: &str, key: &str) -> Result<Claim, Error> {
        use sha2::Digest;
        let digest = sha2::Sha256::new().chain_update(path).chain_update([0]).chain_update(key).finalize();
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        let store_key = format!("{DELIVERIES}{app}/{hex}");
        let lease = self.delivery_lease().await?;
        let pending = encode(&Delivery { status: 0, at: now_ms() })?;
        let txn = hearth_store::Txn::new()
            .when(hearth_store::Compare::missing(&store_key))
            .and_then(hearth_store::Op::Put { key: store_key.clone(), value: pending, lease: Some(lease) })
            .or_else(hearth_store::Op::Get { key: store_key.clone() });
        let response = self.store().txn(txn).await?;
        if response.succeeded {
            return Ok(Claim::New(store_key));
        }
        let existing = match response.responses.first() {
            Some(hearth_store::OpResponse::Get { kv: Some(kv) }) => {
                serde_json::from_slice::<Delivery>(&kv.value)
                    .map_err(|e| Error::Corrupt(store_key.clone(), e))?
            }
            // Expired between the two: take it as new next time.
            _ => return Ok(Claim::InFlight),
        };
        Ok(if existing.status == 0 { Claim::InFlight } else { Claim::Done(existing.status) })
    }

    /// Records how the app answered a claimed delivery. A failure (5xx)
    /// forgets the key, so that the sender's retry is handled again.
    pub(crate) async fn settle_delivery(&self, store_key: &str, status: u16) {
        let result = if status >= 500 {
            self.store().delete(store_key).await.map(drop)
        } else {
            match (self.delivery_lease().await, encode(&Delivery { status, at: now_ms() })) {
                (Ok(lease), Ok(value)) => self.store().put(store_key, value, Some(lease)).await.map(drop),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %chain(&e), "Cannot record a webhook delivery.");
                    return;
                }
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "Cannot record a webhook delivery.");
        }
    }

    async fn delivery_lease(&self) -> Result<hearth_store::LeaseId, Error> {
        let mut current = self.inner.delivery_lease.lock().await;
        if let Some((id, granted)) = *current
            && granted.elapsed() < DELIVERY_LEASE_REUSE
        {
            return Ok(id);
        }
        let lease = self.store().lease_grant(DELIVERY_TTL).await?;
        *current = Some((lease.id, std::time::Instant::now()));
        Ok(lease.id)
    }
}

/// A webhook's check, as the ingress applies it.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    pub(crate) path: String,
    pub(crate) secret: Option<String>,
}

impl Guard {
    /// Whether a request for `path` must be signed under this guard.
    pub(crate) fn covers(&self, path: &str) -> bool {
        Route { host: String::new(), path: self.path.trim_end_matches('/').to_owned() }.matches_path(path)
            || self.path == "/"
    }
}

/// Fires cron and event triggers until `shutdown`.
pub(crate) async fn run(apps: Apps, shutdown: watch::Receiver<bool>) {
    apps.refresh_guards().await;
    let events = tokio::spawn(follow_events(apps.clone()));
    let mut shutdown = shutdown;
    let started = now_ms();
    loop {
        if let Err(e) = cron_tick(&apps, started).await {
            tracing::warn!(error = %chain(&e), "App cron triggers could not be checked.");
        }
        let into_second = now_ms() % 1000;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(1000 - into_second + 5)) => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
    }
    events.abort();
}

async fn cron_tick(apps: &Apps, started: u64) -> Result<(), Error> {
    let now = now_ms();
    for (app, triggers) in apps.all_triggers().await? {
        for trigger in triggers {
            let Spec::Cron(cron) = &trigger.spec else { continue };
            if let Err(e) = fire_cron(apps, &app.name, &trigger, cron, now, started).await {
                tracing::warn!(app = app.name, trigger = trigger.id, error = %chain(&e), "An app cron trigger could not fire.");
            }
        }
    }
    Ok(())
}

async fn fire_cron(
    apps: &Apps,
    name: &str,
    trigger: &Trigger,
    cron: &Cron,
    now: u64,
    started: u64,
) -> Result<(), Error> {
    let schedule = Schedule::parse(&cron.schedule, &cron.timezone).map_err(Error::Manifest)?;
    let key = format!("{CRON_STATE}{name}/{}", trigger.id);
    let store = apps.store();
    let state = match store.get(&key).await? {
        Some(kv) => {
            Some(serde_json::from_slice::<CronState>(&kv.value).map_err(|e| Error::Corrupt(key.clone(), e))?)
        }
        None => None,
    };
    let last = match state {
        Some(s) if s.schedule == cron.schedule && s.timezone == cron.timezone => s.last,
        // A new or changed schedule starts from now.
        _ => {
            let fresh =
                CronState { schedule: cron.schedule.clone(), timezone: cron.timezone.clone(), last: now };
            store.put(&key, encode(&fresh)?, None).await?;
            return Ok(());
        }
    };
    let Some(due) = hearth_triggers::due(&schedule, last, now, started) else { return Ok(()) };
    if apps.serving(name).is_none() {
        // Not loaded (yet): the firing stays owed and fires once it is.
        return Ok(());
    }
    // Recorded first: at most once per firing, even across a crash.
    let fired =
        CronState { schedule: cron.schedule.clone(), timezone: cron.timezone.clone(), last: due.slot };
    store.put(&key, encode(&fired)?, None).await?;
    if due.skipped > 0 {
        apps.note(
            name,
            format!(
                "Cron {}: {} firings were missed while hearth was down; firing the latest once.",
                trigger.id, due.skipped
            ),
        );
    }
    let body = Bytes::from(cron.body.clone());
    let status =
        apps.call(name, trigger, &cron.path, body, "text/plain; charset=utf-8", Some(due.slot)).await;
    let what = format!("Cron {} (the firing at {} ms)", trigger.id, due.slot);
    apps.note(name, fired_line(&what, &cron.path, status));
    Ok(())
}

fn fired_line(what: &str, path: &str, status: Option<u16>) -> String {
    match status {
        Some(status) => format!("{what} called POST {path}: {status}."),
        None => format!("{what} could not call POST {path}: the app is not serving."),
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|e| Error::Internal(e.to_string()))
}

/// Calls the routes that event triggers name, a call per matching change.
/// Follows the store from the current revision: the store is this daemon's,
/// so nothing changes while it is down.
async fn follow_events(apps: Apps) {
    let store: Arc<dyn Store> = apps.store().clone();
    let from = match store.revision().await {
        Ok(rev) => rev + 1,
        Err(e) => {
            tracing::warn!(error = %e, "App event triggers cannot start.");
            return;
        }
    };
    let mut triggers = event_triggers(&apps).await;
    let mut stream = match store.watch("", from).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "App event triggers cannot watch the store.");
            return;
        }
    };
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "The app event trigger watch ended.");
                return;
            }
        };
        let key = &event.kv.key;
        if key.starts_with("apps/") {
            if key.starts_with(record::RECORDS) || key.starts_with(TRIGGERS) {
                triggers = event_triggers(&apps).await;
                apps.refresh_guards().await;
            }
            continue;
        }
        let kind = match event.kind {
            EventKind::Put => "put",
            EventKind::Delete => "delete",
        };
        for (name, trigger) in &triggers {
            let Spec::Event(spec) = &trigger.spec else { continue };
            let kind_ok = spec.kinds.is_empty() || spec.kinds.iter().any(|k| k == kind);
            if !kind_ok || !key.starts_with(&spec.prefix) {
                continue;
            }
            let body = serde_json::json!({
                "kind": kind,
                "key": key,
                "value": String::from_utf8_lossy(&event.kv.value),
                "revision": event.revision(),
            });
            let (apps, name, trigger, path) =
                (apps.clone(), name.clone(), trigger.clone(), spec.path.clone());
            // One slow app holds up neither the others nor the watch.
            tokio::spawn(async move {
                let status = apps
                    .call(&name, &trigger, &path, Bytes::from(body.to_string()), "application/json", None)
                    .await;
                apps.note(&name, fired_line(&format!("Event {}", trigger.id), &path, status));
            });
        }
    }
}

async fn event_triggers(apps: &Apps) -> Vec<(String, Trigger)> {
    match apps.all_triggers().await {
        Ok(all) => all
            .into_iter()
            .flat_map(|(app, ts)| {
                ts.into_iter()
                    .filter(|t| matches!(t.spec, Spec::Event(_)))
                    .map(move |t| (app.name.clone(), t))
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %chain(&e), "Cannot read the apps' event triggers.");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(schedule: &str, path: &str) -> Spec {
        Spec::Cron(Cron {
            schedule: schedule.into(),
            timezone: "UTC".into(),
            path: path.into(),
            body: String::new(),
        })
    }

    #[test]
    fn triggers_are_checked_when_declared() {
        assert!(cron("*/5 * * * *", "/tick").validate().is_ok());
        for (spec, needle) in [
            (cron("* * *", "/"), "has 3 fields"),
            (cron("* * * * *", "tick"), "not valid"),
            (cron("* * * * *", "/a b"), "not valid"),
            (cron("* * * * *", "/a#b"), "not valid"),
            (
                Spec::Event(Event { prefix: "apps/data/".into(), kinds: vec![], path: "/".into() }),
                "not allowed",
            ),
            (
                Spec::Event(Event {
                    prefix: "machines/".into(),
                    kinds: vec!["poke".into()],
                    path: "/".into(),
                }),
                "not one of",
            ),
            (Spec::Webhook(Webhook { path: "/gh".into(), secret: Some(String::new()) }), "empty secret"),
            (Spec::Webhook(Webhook { path: "gh".into(), secret: None }), "not valid"),
        ] {
            let error = spec.validate().unwrap_err().to_string();
            assert!(error.contains(needle), "{spec:?}: {error}");
        }
        let two = [
            Spec::Webhook(Webhook { path: "/gh".into(), secret: Some("a".into()) }),
            Spec::Webhook(Webhook { path: "/gh/".into(), secret: None }),
        ];
        assert!(validate_all(&two).unwrap_err().to_string().contains("two webhooks"));
    }

    #[test]
    fn specs_are_tagged_by_kind_in_json() {
        let json = serde_json::to_value(cron("@daily", "/")).unwrap();
        assert_eq!(json["kind"], "cron");
        let back: Spec =
            serde_json::from_value(serde_json::json!({"kind": "webhook", "path": "/gh", "secret": "s"}))
                .unwrap();
        assert_eq!(back, Spec::Webhook(Webhook { path: "/gh".into(), secret: Some("s".into()) }));
        let unknown = serde_json::from_value::<Spec>(
            serde_json::json!({"kind": "cron", "schedule": "@daily", "paht": "/"}),
        );
        assert!(unknown.is_err());
    }

    #[test]
    fn guards_cover_their_path_and_below() {
        let g = Guard { path: "/hooks/github".into(), secret: None };
        assert!(g.covers("/hooks/github"));
        assert!(g.covers("/hooks/github/push"));
        assert!(!g.covers("/hooks/githubx"));
        assert!(!g.covers("/"));
        assert!(Guard { path: "/".into(), secret: None }.covers("/anything"));
    }
}
