//! What starts runs besides a direct call: webhooks on the ingress, cron
//! schedules, and events from hearth's own store. Declared in the
//! workflow's `hearth.toml`:
//!
//! ```toml
//! [[webhook]]
//! path = "start"                 # POST http://hooks.localhost:8080/WORKFLOW/start
//! secret = "a shared secret"     # optional: X-Hearth-Signature: sha256=HMAC(body)
//!
//! [[webhook]]
//! path = "approve"
//! signal = "approve"             # signals the run ?run=ID with the body
//!
//! [[cron]]
//! schedule = "0 9 * * mon-fri"
//! timezone = "Europe/Paris"      # default UTC
//! input = '{"report": "daily"}'
//!
//! [[event]]
//! prefix = "machines/"           # a run per change under the prefix
//! kinds = ["put"]                # default: put and delete
//! ```
//!
//! **Cron** never fires twice for one time: each firing's run id is
//! `WORKFLOW-cron-N-TIME` (starting is idempotent by id), and the last time
//! fired is kept in the store. **Missed runs** (the daemon was down over a
//! firing): the most recent missed one fires once when the daemon comes
//! back, the others are skipped and logged — catch up once, as systemd's
//! `Persistent=true` does. A slot that passed while the daemon was up (a
//! slow tick) fires late, on its own.

use std::collections::HashMap;

use futures::StreamExt;
use hearth_triggers::driver::{self, CronJob, CronTarget, Guarantee};
use hearth_triggers::spec::{self, Kind, OwnKeys};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::record::{self, Definition, decode, encode};
use crate::service::{StartRequest, Workflows};
use crate::{Error, now_ms};
use hearth_triggers::signature as webhook_signature;

/// Every trigger a workflow declares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    #[serde(default, rename = "webhook", skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<Webhook>,
    #[serde(default, rename = "cron", skip_serializing_if = "Vec::is_empty")]
    pub crons: Vec<Cron>,
    #[serde(default, rename = "event", skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventTrigger>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// The last part of `http://hooks.DOMAIN:PORT/WORKFLOW/PATH`.
    pub path: String,
    /// Signal this name to the run `?run=ID` instead of starting a run.
    #[serde(default)]
    pub signal: Option<String>,
    /// Requests must carry `X-Hearth-Signature: sha256=HEX`, the HMAC-SHA256
    /// of the body with this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cron {
    pub schedule: String,
    #[serde(default = "utc")]
    pub timezone: String,
    #[serde(default)]
    pub input: String,
}

fn utc() -> String {
    "UTC".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTrigger {
    pub prefix: String,
    #[serde(default)]
    pub kinds: Vec<String>,
}

impl Triggers {
    /// Parses the triggers out of a workflow's `hearth.toml` (empty: none).
    /// Its `outbound` list is not a trigger: `crate::outbound` reads it.
    pub fn parse(manifest: &str) -> Result<Triggers, Error> {
        let mut table: toml::Table =
            toml::from_str(manifest).map_err(|e| Error::Manifest(e.to_string().trim_end().to_owned()))?;
        table.remove("outbound");
        let t =
            Triggers::deserialize(table).map_err(|e| Error::Manifest(e.to_string().trim_end().to_owned()))?;
        t.validate()?;
        Ok(t)
    }

    /// Checks every trigger, and that no two webhooks share a path.
    pub fn validate(&self) -> Result<(), Error> {
        let t = self;
        let mut paths = std::collections::HashSet::new();
        for w in &t.webhooks {
            let ok = !w.path.is_empty()
                && w.path.len() <= 64
                && w.path.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(Error::Manifest(format!(
                    "webhook path {:?} is not valid: use 1 to 64 letters, digits, dashes and underscores",
                    w.path
                )));
            }
            if !paths.insert(&w.path) {
                return Err(Error::Manifest(format!("two webhooks have the path {:?}", w.path)));
            }
            spec::check_secret(&w.path, w.secret.as_deref()).map_err(Error::Manifest)?;
        }
        for c in &t.crons {
            spec::check_schedule(&c.schedule, &c.timezone).map_err(Error::Manifest)?;
        }
        for e in &t.events {
            spec::check_event(&e.prefix, &e.kinds, OWN_KEYS).map_err(Error::Manifest)?;
        }
        Ok(())
    }

    /// With `spec` added.
    fn with(&self, spec: &Spec) -> Triggers {
        let mut t = self.clone();
        match spec {
            Spec::Cron(c) => t.crons.push(c.clone()),
            Spec::Event(e) => t.events.push(e.clone()),
            Spec::Webhook(w) => t.webhooks.push(w.clone()),
        }
        t
    }
}

/// One trigger of any kind, as added through the API
/// (`hearth workflow trigger add`) and listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Spec {
    Cron(Cron),
    Event(EventTrigger),
    Webhook(Webhook),
}

impl hearth_triggers::Spec for Spec {
    fn kind(&self) -> Kind {
        match self {
            Spec::Cron(_) => Kind::Cron,
            Spec::Event(_) => Kind::Event,
            Spec::Webhook(_) => Kind::Webhook,
        }
    }
}

/// What workflows' event triggers may not follow.
const OWN_KEYS: OwnKeys = OwnKeys {
    prefix: record::WORKFLOWS,
    why: "workflows cannot trigger on workflow records (runs would start runs)",
};

/// A workflow's trigger: where it came from and what it does.
pub type Trigger = hearth_triggers::Trigger<Spec>;
/// An added trigger as stored at `workflows/triggers/NAME/ID`.
type Stored = hearth_triggers::Stored<Spec>;

fn manifest_triggers(def: &Definition) -> Vec<Trigger> {
    let t = &def.triggers;
    let crons = t.crons.iter().cloned().map(Spec::Cron);
    let events = t.events.iter().cloned().map(Spec::Event);
    let webhooks = t.webhooks.iter().cloned().map(Spec::Webhook);
    spec::from_manifest(crons.chain(events).chain(webhooks), def.updated_at)
}

impl Workflows {
    /// Every trigger of a workflow: its manifest's, then those added.
    pub async fn triggers(&self, name: &str) -> Result<Vec<Trigger>, Error> {
        let def = self.definition(name).await?;
        let mut all = manifest_triggers(&def);
        all.extend(self.added_triggers(name).await?);
        Ok(all)
    }

    async fn added_triggers(&self, name: &str) -> Result<Vec<Trigger>, Error> {
        let range = self.store().range(&record::triggers_prefix(name)).await?;
        range
            .kvs
            .iter()
            .map(|kv| {
                let s: Stored = decode(&kv.key, &kv.value)?;
                Ok(Trigger::added(s))
            })
            .collect()
    }

    /// The manifest's triggers with the added ones, as one set.
    async fn effective(&self, def: &Definition) -> Result<Triggers, Error> {
        let mut t = def.triggers.clone();
        for added in self.added_triggers(&def.name).await? {
            t = t.with(&added.spec);
        }
        Ok(t)
    }

    /// Adds a trigger to a deployed workflow. It stays across redeploys
    /// until removed.
    pub async fn add_trigger(&self, name: &str, spec: Spec) -> Result<Trigger, Error> {
        let def = self.definition(name).await?;
        self.effective(&def).await?.with(&spec).validate()?;
        let stored = Stored::new(spec, now_ms());
        // Only while the workflow exists: a `workflow rm` racing this
        // leaves no trigger behind.
        let txn = hearth_store::Txn::new()
            .when(hearth_store::Compare::exists(record::def_key(name)))
            .and_then(hearth_store::Op::Put {
                key: record::trigger_key(name, &stored.id),
                value: encode(&stored),
                lease: None,
            });
        if !self.store().txn(txn).await?.succeeded {
            return Err(Error::NotFound(name.to_owned()));
        }
        Ok(Trigger::added(stored))
    }

    /// Removes a trigger added through the API (a manifest's go with a
    /// redeploy that no longer declares them).
    pub async fn remove_trigger(&self, name: &str, id: &str) -> Result<(), Error> {
        let all = self.triggers(name).await?;
        match all.iter().find(|t| t.id == id) {
            None => {
                let ids: Vec<&str> = all.iter().map(|t| t.id.as_str()).collect();
                return Err(Error::TriggerNotFound {
                    workflow: name.to_owned(),
                    id: id.to_owned(),
                    ids: ids.join(", "),
                });
            }
            Some(t) if t.source == spec::FROM_MANIFEST => {
                return Err(Error::Invalid(format!(
                    "trigger {id} of workflow {name:?} comes from its hearth.toml: remove it there and deploy again"
                )));
            }
            Some(_) => {}
        }
        // The trigger and its cron state go together: no state is left
        // without its trigger, whatever happens between.
        let txn = hearth_store::Txn::new()
            .and_then(hearth_store::Op::Delete { key: record::trigger_key(name, id) })
            .and_then(hearth_store::Op::Delete { key: format!("{}{name}/{id}", record::CRON) });
        self.store().txn(txn).await?;
        Ok(())
    }
}

/// The answer to a webhook request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookReply {
    pub status: u16,
    /// JSON.
    pub body: String,
}

impl WebhookReply {
    fn error(status: u16, message: String) -> WebhookReply {
        WebhookReply { status, body: serde_json::json!({ "error": message }).to_string() + "\n" }
    }
}

impl Workflows {
    /// Handles `POST /WORKFLOW/PATH[?run=ID]` on the webhook host.
    pub async fn webhook(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        signature: Option<&str>,
        idempotency_key: Option<&str>,
        body: &[u8],
    ) -> WebhookReply {
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (workflow, hook) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let def = match self.definition(workflow).await {
            Ok(def) => def,
            Err(Error::NotFound(_)) | Err(Error::Invalid(_)) => {
                return WebhookReply::error(
                    404,
                    format!(
                        "no workflow {workflow:?} here; webhooks are http://hooks.HOST/WORKFLOW/PATH as the workflow's hearth.toml declares"
                    ),
                );
            }
            Err(e) => return WebhookReply::error(503, e.to_string()),
        };
        let triggers = match self.effective(&def).await {
            Ok(t) => t,
            Err(e) => return WebhookReply::error(503, e.to_string()),
        };
        let Some(webhook) = triggers.webhooks.iter().find(|w| w.path == hook) else {
            let known: Vec<&str> = triggers.webhooks.iter().map(|w| w.path.as_str()).collect();
            return WebhookReply::error(
                404,
                format!("workflow {workflow:?} has no webhook {hook:?}; it declares {known:?}"),
            );
        };
        if method != "POST" {
            return WebhookReply::error(405, format!("webhooks take POST, not {method}"));
        }
        if let Some(secret) = &webhook.secret
            && !webhook_signature::verify(secret, body, signature)
        {
            return WebhookReply::error(401, webhook_signature::REFUSED.into());
        }
        let data = String::from_utf8_lossy(body).into_owned();
        if let Some(signal) = &webhook.signal {
            let run = hearth_triggers::percent::query_value(query.unwrap_or(""), "run").unwrap_or_default();
            if run.is_empty() {
                return WebhookReply::error(400, "say which run to signal: ?run=ID".into());
            }
            return match self.signal(&run, signal, data).await {
                Ok(()) => reply(202, serde_json::json!({ "run": run, "signal": signal })),
                Err(e) => error_reply(&e),
            };
        }
        // A retried delivery with the same key starts one run.
        let id = idempotency_key
            .map(|k| format!("{workflow}-hook-{}", &hearth_wasm::sha256_hex(k.as_bytes())[..16]));
        let request = StartRequest {
            workflow: workflow.to_owned(),
            input: data,
            id,
            started_by: "webhook".into(),
            parent: None,
        };
        match self.start(request).await {
            Ok(started) => reply(
                202,
                serde_json::json!({ "run": started.run.id, "created": started.created, "status": started.run.status }),
            ),
            Err(e) => error_reply(&e),
        }
    }
}

fn reply(status: u16, body: serde_json::Value) -> WebhookReply {
    WebhookReply { status, body: body.to_string() + "\n" }
}

fn error_reply(e: &Error) -> WebhookReply {
    let status = match e.kind() {
        crate::ErrorKind::NotFound => 404,
        crate::ErrorKind::Invalid => 400,
        crate::ErrorKind::Conflict => 409,
        crate::ErrorKind::TooLarge => 413,
        crate::ErrorKind::Unavailable => 503,
        crate::ErrorKind::Internal => 500,
    };
    WebhookReply::error(status, e.to_string())
}

/// Fires cron triggers and event triggers until `shutdown`.
pub(crate) async fn run(workflows: Workflows, shutdown: watch::Receiver<bool>) {
    let events = tokio::spawn(events(workflows.clone(), shutdown.clone()));
    let store = workflows.store().clone();
    driver::run(Crons { workflows }, store, shutdown).await;
    events.abort();
}

/// What a workflow's cron firing does: start a run whose id is made of the
/// trigger and the slot, so firing a slot again (after a crash before it
/// was recorded, or from a second daemon) starts nothing new: exactly once.
struct Crons {
    workflows: Workflows,
}

impl CronTarget for Crons {
    /// The trigger's slot in the run id (a manifest's by position, as they
    /// always have been; an added one by id), and the trigger.
    type Job = (String, Cron);
    type Error = Error;
    const GUARANTEE: Guarantee = Guarantee::Idempotent;

    async fn jobs(&self) -> Result<Vec<CronJob<(String, Cron)>>, Error> {
        let mut jobs = Vec::new();
        for def in self.workflows.definitions().await? {
            let manifest = def.triggers.crons.iter().enumerate().map(|(i, c)| (i.to_string(), c.clone()));
            let manifest: Vec<_> = manifest.map(|job| (record::def_key(&def.name), job)).collect();
            // One unreadable added trigger stops no other workflow's crons.
            let added = match self.workflows.added_triggers(&def.name).await {
                Ok(added) => added,
                Err(e) => {
                    tracing::warn!(workflow = %def.name, error = %e, "Cannot read a workflow's added triggers; its added crons wait.");
                    Vec::new()
                }
            };
            let added = added.into_iter().filter_map(|t| match t.spec {
                Spec::Cron(c) => Some((record::trigger_key(&def.name, &t.id), (t.id, c))),
                _ => None,
            });
            for (source_key, (slot, cron)) in manifest.into_iter().chain(added) {
                jobs.push(CronJob {
                    owner: def.name.clone(),
                    state_key: format!("{}{}/{slot}", record::CRON, def.name),
                    source_key,
                    schedule: cron.schedule.clone(),
                    timezone: cron.timezone.clone(),
                    job: (slot, cron),
                });
            }
        }
        Ok(jobs)
    }

    async fn fire(&self, job: &CronJob<(String, Cron)>, due: hearth_triggers::Due) -> Result<(), Error> {
        let (workflow, (slot, cron)) = (&job.owner, &job.job);
        if due.skipped > 0 {
            tracing::info!(workflow = %workflow, schedule = %cron.schedule, skipped = due.skipped, "Cron firings were missed while hearth was down; firing the latest once.");
        }
        let request = StartRequest {
            workflow: workflow.clone(),
            input: cron.input.clone(),
            id: Some(format!("{workflow}-cron-{slot}-{}", due.slot)),
            started_by: "cron".into(),
            parent: None,
        };
        self.workflows.start(request).await?;
        Ok(())
    }
}

/// Every workflow's event triggers, manifest and added, by workflow.
async fn event_triggers(workflows: &Workflows) -> HashMap<String, Vec<EventTrigger>> {
    let defs = match workflows.definitions().await {
        Ok(defs) => defs,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot read the workflows' event triggers.");
            return HashMap::new();
        }
    };
    let mut out = HashMap::new();
    for def in defs {
        match workflows.effective(&def).await {
            Ok(t) => {
                out.insert(def.name, t.events);
            }
            Err(e) => {
                tracing::warn!(workflow = %def.name, error = %e, "Cannot read a workflow's event triggers.")
            }
        }
    }
    out
}

/// Starts a run per store change that an event trigger matches. The store
/// is this daemon's, so nothing changes while it is down: following from
/// the current revision misses nothing.
async fn events(workflows: Workflows, _shutdown: watch::Receiver<bool>) {
    let changes = hearth_triggers::events::follow(workflows.store().clone(), "Event triggers").await;
    futures::pin_mut!(changes);
    let mut triggers = event_triggers(&workflows).await;
    while let Some(event) = changes.next().await {
        on_event(&workflows, &mut triggers, &event).await;
    }
}

/// Starts the runs one store change calls for. Changes to the workflows'
/// own keys (runs would start runs) and to keys that hold secrets start
/// none, whatever a trigger's prefix.
async fn on_event(
    workflows: &Workflows,
    triggers: &mut HashMap<String, Vec<EventTrigger>>,
    event: &hearth_store::Event,
) {
    let key = &event.kv.key;
    if key.starts_with(record::DEFS) || key.starts_with(record::TRIGGERS) {
        *triggers = event_triggers(workflows).await;
        return;
    }
    if key.starts_with(record::WORKFLOWS) || hearth_triggers::private::is_secret_key(key) {
        return;
    }
    for (workflow, list) in triggers.iter() {
        for (index, t) in list.iter().enumerate() {
            if !hearth_triggers::events::takes(&t.prefix, &t.kinds, event) {
                continue;
            }
            let input = hearth_triggers::events::payload(event);
            let request = StartRequest {
                workflow: workflow.clone(),
                input,
                id: Some(format!("{workflow}-event-{index}-{}", event.revision())),
                started_by: "event".into(),
                parent: None,
            };
            if let Err(e) = workflows.start(request).await {
                tracing::warn!(workflow = %workflow, key = %key, error = %e, "An event trigger could not start a run.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_triggers::CronState;
    use std::time::Duration;

    #[test]
    fn manifests_declare_triggers() {
        let t = Triggers::parse(
            r#"
            [[webhook]]
            path = "start"
            secret = "s"
            [[webhook]]
            path = "approve"
            signal = "approve"
            [[cron]]
            schedule = "*/5 * * * * *"
            [[event]]
            prefix = "machines/"
            kinds = ["put"]
            "#,
        )
        .unwrap();
        assert_eq!(t.webhooks.len(), 2);
        assert_eq!(t.crons[0].timezone, "UTC");
        assert_eq!(t.events[0].prefix, "machines/");
        assert_eq!(Triggers::parse("").unwrap(), Triggers::default());
    }

    #[test]
    fn bad_triggers_are_refused_at_deploy() {
        for (text, needle) in [
            ("[[cron]]\nschedule = \"* * *\"", "has 3 fields"),
            ("[[cron]]\nschedule = \"* * * * *\"\ntimezone = \"Nowhere\"", "unknown time zone"),
            ("[[webhook]]\npath = \"a/b\"", "not valid"),
            ("[[webhook]]\npath = \"a\"\n[[webhook]]\npath = \"a\"", "two webhooks"),
            ("[[event]]\nprefix = \"workflows/runs/\"", "not allowed"),
            ("[[event]]\nprefix = \"machines/\"\nkinds = [\"poke\"]", "not one of"),
            ("[[webhook]]\npath = \"a\"\nsecrt = \"x\"", "unknown field"),
            ("[[bell]]\nring = 1", "unknown field"),
        ] {
            let error = Triggers::parse(text).unwrap_err().to_string();
            assert!(error.contains(needle), "{text}: {error}");
        }
    }

    /// A workflows service over a fresh store with a workflow `w` recorded
    /// (no component needed: triggers and removal only touch records).
    async fn with_workflow() -> (tempfile::TempDir, hearth_store::redb::RedbStore, Workflows) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            hearth_store::redb::RedbStore::open(&dir.path().join("state.redb"), Default::default()).unwrap();
        let options = crate::Options::new(dir.path().join("data"), dir.path().join("cache"));
        let shared: std::sync::Arc<dyn hearth_store::Store> = std::sync::Arc::new(store.clone());
        let config = hearth_config::Config::open(shared.clone(), dir.path()).unwrap();
        let workflows = Workflows::new(shared, config, options).unwrap();
        let def = Definition {
            name: "w".into(),
            versions: Vec::new(),
            active: 1,
            triggers: Triggers::default(),
            created_at: 1,
            updated_at: 1,
        };
        use hearth_store::Store as _;
        store.put(&record::def_key("w"), encode(&def), None).await.unwrap();
        (dir, store, workflows)
    }

    /// What `act` changed under `workflows/`, as (revision, key) in order.
    /// A marker written after it says where its changes end.
    async fn changes<F: std::future::Future<Output = ()>>(
        store: &hearth_store::redb::RedbStore,
        act: F,
    ) -> Vec<(u64, String)> {
        use hearth_store::Store as _;
        const END: &str = "workflows/test-end";
        let from = store.revision().await.unwrap() + 1;
        let mut watch = store.watch(record::WORKFLOWS, from).await.unwrap();
        act.await;
        store.put(END, Vec::new(), None).await.unwrap();
        let mut out = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), watch.next());
            let event = next.await.unwrap().unwrap().unwrap();
            if event.kv.key == END {
                return out;
            }
            out.push((event.revision(), event.kv.key));
        }
    }

    fn cron_spec() -> Spec {
        Spec::Cron(Cron { schedule: "@daily".into(), timezone: "UTC".into(), input: String::new() })
    }

    #[tokio::test]
    async fn removing_a_trigger_and_its_cron_state_is_one_transaction() {
        let (_dir, store, workflows) = with_workflow().await;
        let id = workflows.add_trigger("w", cron_spec()).await.unwrap().id;
        let state = CronState { schedule: "@daily".into(), timezone: "UTC".into(), last: 5 };
        let cron_key = format!("{}w/{id}", record::CRON);
        hearth_store::Store::put(&store, &cron_key, encode(&state), None).await.unwrap();
        let seen = changes(&store, async { workflows.remove_trigger("w", &id).await.unwrap() }).await;
        let keys: Vec<&str> = seen.iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(keys, [record::trigger_key("w", &id).as_str(), cron_key.as_str()]);
        assert_eq!(seen[0].0, seen[1].0, "two revisions: {seen:?}");
        store.shutdown().await;
    }

    #[tokio::test]
    async fn removing_a_workflow_takes_its_triggers_in_the_same_transaction() {
        let (_dir, store, workflows) = with_workflow().await;
        let id = workflows.add_trigger("w", cron_spec()).await.unwrap().id;
        let state = CronState { schedule: "@daily".into(), timezone: "UTC".into(), last: 5 };
        hearth_store::Store::put(&store, &format!("{}w/{id}", record::CRON), encode(&state), None)
            .await
            .unwrap();
        let seen = changes(&store, async { workflows.remove("w").await.unwrap() }).await;
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen.iter().all(|(rev, _)| *rev == seen[0].0), "more than one revision: {seen:?}");
        // Gone, and a second removal says so; a trigger added to a removed
        // workflow is refused and writes nothing.
        assert!(matches!(workflows.remove("w").await, Err(Error::NotFound(_))));
        let before = hearth_store::Store::revision(&store).await.unwrap();
        assert!(matches!(workflows.add_trigger("w", cron_spec()).await, Err(Error::NotFound(_))));
        assert_eq!(hearth_store::Store::revision(&store).await.unwrap(), before);
        store.shutdown().await;
    }
}
