//! Where an app's triggers are kept: its active version's manifest, and
//! those added through the API at `apps/triggers/NAME/ID`; listing,
//! adding and removing them (each one transaction), and what `app rm`
//! deletes with them.

use std::collections::HashMap;

use hearth_triggers::spec;

use super::guards::DELIVERIES;
use super::{Spec, Stored, Trigger, same_webhook};
use crate::record::{self, App};
use crate::service::Apps;
use crate::{Error, chain, now_ms};

/// Triggers added through the API: `apps/triggers/NAME/ID`.
pub const TRIGGERS: &str = "apps/triggers/";
/// When each cron trigger last fired: `apps/cron/NAME/ID`.
pub const CRON_STATE: &str = "apps/cron/";

/// The store operations that delete what `app`'s triggers keep (on `app rm`).
pub(crate) fn delete_ops(app: &str) -> Vec<hearth_store::Op> {
    [trigger_prefix(app), format!("{CRON_STATE}{app}/"), format!("{DELIVERIES}{app}/")]
        .into_iter()
        .map(|prefix| hearth_store::Op::DeletePrefix { prefix })
        .collect()
}

pub(super) fn trigger_prefix(app: &str) -> String {
    format!("{TRIGGERS}{app}/")
}

/// The manifest's triggers of `app`'s active version, with their ids.
pub(super) fn manifest_triggers(app: &App) -> Vec<Trigger> {
    let Some(version) = app.active_version() else { return Vec::new() };
    spec::from_manifest(version.manifest.triggers(), version.created_at)
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

    pub(crate) async fn added_triggers(&self, name: &str) -> Result<Vec<Trigger>, Error> {
        let prefix = trigger_prefix(name);
        let range = self.store().range(&prefix).await?;
        let mut out = Vec::with_capacity(range.kvs.len());
        for kv in range.kvs {
            let stored: Stored = serde_json::from_slice(&kv.value).map_err(|source| {
                Error::CorruptTrigger { app: name.to_owned(), id: kv.key[prefix.len()..].to_owned(), source }
            })?;
            out.push(Trigger::added(stored));
        }
        Ok(out)
    }

    /// Adds a trigger to a deployed app; it stays across redeploys until
    /// removed.
    pub async fn add_trigger(&self, name: &str, spec: Spec) -> Result<Trigger, Error> {
        record::validate_name(name)?;
        spec.validate()?;
        let lock = self.app_lock(name);
        let _held = lock.lock().await;
        let existing = self.triggers(name).await?;
        if let Spec::Webhook(w) = &spec
            && let Some(other) = existing.iter().find(|t| same_webhook(&t.spec, &w.path))
        {
            return Err(Error::Invalid(format!(
                "app {name:?} already has a webhook on {:?} ({}); remove it first",
                w.path, other.id
            )));
        }
        let stored = Stored::new(spec, now_ms());
        let id = &stored.id;
        // Only while the app exists: an `app rm` racing this leaves nothing.
        let txn = hearth_store::Txn::new().when(hearth_store::Compare::exists(record::key(name))).and_then(
            hearth_store::Op::Put {
                key: format!("{}{id}", trigger_prefix(name)),
                value: encode(&stored)?,
                lease: None,
            },
        );
        if !self.store().txn(txn).await?.succeeded {
            return Err(Error::NotFound(name.to_owned()));
        }
        self.rearm(name).await;
        self.note(
            name,
            format!("Added the {} trigger {id}.", hearth_triggers::Spec::kind(&stored.spec).as_str()),
        );
        Ok(Trigger::added(stored))
    }

    /// Removes a trigger added through the API. A manifest's triggers go
    /// with a redeploy that no longer declares them.
    pub async fn remove_trigger(&self, name: &str, id: &str) -> Result<(), Error> {
        record::validate_name(name)?;
        let lock = self.app_lock(name);
        let _held = lock.lock().await;
        let key = format!("{}{id}", trigger_prefix(name));
        // An added trigger goes by its key, read or not (an unreadable one
        // must be removable).
        if !id.contains('/') && self.store().get(&key).await?.is_some() {
            self.delete_added(name, id).await?;
            return Ok(());
        }
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
            Some(t) if t.source == spec::FROM_MANIFEST => {
                return Err(Error::Invalid(format!(
                    "trigger {id} of app {name:?} comes from its hearth.toml: remove it there and deploy again"
                )));
            }
            Some(_) => {}
        }
        self.delete_added(name, id).await
    }

    async fn delete_added(&self, name: &str, id: &str) -> Result<(), Error> {
        let txn = hearth_store::Txn::new()
            .and_then(hearth_store::Op::Delete { key: format!("{}{id}", trigger_prefix(name)) })
            .and_then(hearth_store::Op::Delete { key: format!("{CRON_STATE}{name}/{id}") });
        self.store().txn(txn).await?;
        self.rearm(name).await;
        Ok(())
    }

    /// Installs the app's checks again after its triggers changed. The
    /// change is made; if this fails, the app answers 503 (never
    /// unchecked) and the watch of the store tries again.
    async fn rearm(&self, name: &str) {
        if let Err(e) = self.reconcile_held(name).await {
            tracing::warn!(app = name, error = %chain(&e), "Cannot install the app's webhooks after a trigger change.");
        }
    }

    /// Every app's triggers, by app, read in one pass.
    pub(super) async fn all_triggers(&self) -> Result<Vec<(App, Vec<Trigger>)>, Error> {
        let store = self.store();
        let records = store.range(record::RECORDS).await?;
        let added = store.range(TRIGGERS).await?;
        let mut by_app: HashMap<String, Vec<Trigger>> = HashMap::new();
        for kv in added.kvs {
            let Some(rest) = kv.key.strip_prefix(TRIGGERS) else { continue };
            let Some((app, _)) = rest.split_once('/') else { continue };
            match serde_json::from_slice::<Stored>(&kv.value) {
                Ok(s) => by_app.entry(app.to_owned()).or_default().push(Trigger::added(s)),
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
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|e| Error::Internal(e.to_string()))
}
