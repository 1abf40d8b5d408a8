//! What an app reads through `wasi:config`: its scope's merged config
//! (`hearth_config`: files, its `hearth.toml` `[config]`, global, `app:NAME`,
//! override), secrets decrypted. A running app sees a change from its next
//! request, with no redeploy: [`Apps::follow_config`] re-resolves every
//! loaded app when config moves.
//!
//! An app's secrets (`hearth app secret set`) are config secrets in its
//! scope; those kept under `apps/secrets/` before config existed are moved
//! there once, at start.

use std::collections::BTreeMap;

use hearth_config::{Base, Key, Layer, Scope};
use hearth_store::{Compare, Op, Txn};
use tokio::sync::watch;

use crate::manifest::Manifest;
use crate::record::{self, validate_name};
use crate::service::{Apps, lock};
use crate::{Error, chain};

fn scope(name: &str) -> Scope {
    Scope::App(name.to_owned())
}

fn secret_key(secret: &str) -> Result<Key, Error> {
    validate_secret_name(secret)?;
    Key::parse(secret).map_err(|e| Error::Invalid(e.to_string()))
}

impl Apps {
    /// Sets a secret of an app (which need not be deployed yet): a config
    /// secret in the app's scope. A running app sees the new value from its
    /// next request.
    pub async fn set_secret(&self, name: &str, secret: &str, value: String) -> Result<(), Error> {
        validate_name(name)?;
        let key = secret_key(secret)?;
        let layer = Layer::of(scope(name));
        self.inner.config.set(&layer, &key, serde_json::Value::String(value), true).await?;
        self.refresh_config(name).await
    }

    /// Deletes a secret. A running app that declares it keeps serving with
    /// the value it has until it is redeployed (which then fails until the
    /// secret is set again).
    pub async fn delete_secret(&self, name: &str, secret: &str) -> Result<bool, Error> {
        validate_name(name)?;
        let key = secret_key(secret)?;
        let layer = Layer::of(scope(name));
        // Only a secret by that name: a plain value set there stays.
        let entries = self.inner.config.entries(Some(&layer), key.as_str()).await?;
        if !entries.iter().any(|e| e.key == key && e.secret) {
            return Ok(false);
        }
        match self.inner.config.remove(&layer, &key).await {
            Ok(_) => Ok(true),
            Err(hearth_config::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The names of an app's secrets (never their values).
    pub async fn secrets(&self, name: &str) -> Result<Vec<String>, Error> {
        validate_name(name)?;
        let entries = self.inner.config.entries(Some(&Layer::of(scope(name))), "").await?;
        Ok(entries.into_iter().filter(|e| e.secret).map(|e| e.key.to_string()).collect())
    }

    /// The layer an app's own `hearth.toml` `[config]` is, for its active
    /// version (for `config get --explain`).
    pub async fn config_base(&self, name: &str) -> Result<Option<Base>, Error> {
        let Some((app, _)) = self.find(name).await? else { return Ok(None) };
        let Some(version) = app.active_version() else { return Ok(None) };
        Ok(Some(base(name, &version.manifest)))
    }

    /// Loads what a loaded app reads again, and swaps it in if it changed.
    pub(crate) async fn refresh_config(&self, name: &str) -> Result<(), Error> {
        let guard = self.app_lock(name);
        let _held = guard.lock().await;
        let Some((app, _)) = self.find(name).await? else { return Ok(()) };
        let current = lock(&self.inner.loaded)
            .get(name)
            .and_then(|e| Some((e.serving.clone().ok()?, e.guards.clone())));
        let (Some((loaded, guards)), Some(version)) = (current, app.active_version()) else { return Ok(()) };
        if loaded.ctx.version != version.number {
            return Ok(());
        }
        let config = match self.resolve_config(name, &version.manifest).await {
            Ok(config) => config,
            // A declared secret was removed: keep serving what it had.
            Err(Error::MissingSecret { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        if config.values == loaded.ctx.config {
            return Ok(());
        }
        let refreshed = self.loaded(&app, version, config, loaded.ctx.limits, loaded.code.clone());
        self.install(name, self.routes_of(&app), Ok(refreshed), guards);
        Ok(())
    }

    /// The app's merged config, as `wasi:config` serves it: dotted keys,
    /// text values. Every secret the manifest declares must be set.
    pub(crate) async fn resolve_config(&self, name: &str, manifest: &Manifest) -> Result<AppConfig, Error> {
        // Read first: a change told after this is seen again (see `install`).
        let seen = *self.inner.config.changes().borrow();
        let resolved = self.inner.config.resolve(&scope(name), Some(&base(name, manifest))).await?;
        let values = resolved.flat();
        for secret in &manifest.secrets {
            if !values.contains_key(secret) {
                return Err(Error::MissingSecret { app: name.to_owned(), secret: secret.clone() });
            }
        }
        Ok(AppConfig { values, seen })
    }

    /// Gives a just-installed app the config that moved while it loaded:
    /// [`Self::follow_config`] refreshes only the apps already loaded when
    /// it is told of a change.
    pub(crate) fn catch_up_config(&self, name: &str, loaded: &crate::service::Loaded) {
        if *self.inner.config.changes().borrow() == loaded.config_seen {
            return;
        }
        let (this, name) = (self.clone(), name.to_owned());
        tokio::spawn(async move {
            if let Err(e) = this.refresh_config(&name).await {
                tracing::warn!(app = name, error = %chain(&e), "Cannot give an app its new config.");
            }
        });
    }

    /// Re-resolves every loaded app's config each time config moves, until
    /// `shutdown`.
    pub(crate) async fn follow_config(self, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.inner.config.changes();
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            let names: Vec<String> = lock(&self.inner.loaded).keys().cloned().collect();
            for name in names {
                if let Err(e) = self.refresh_config(&name).await {
                    tracing::warn!(app = name, error = %chain(&e), "Cannot give an app its new config.");
                }
            }
        }
    }

    /// Moves secrets kept under `apps/secrets/APP/SECRET` (before config
    /// existed) into config, each in its app's scope, and deletes them
    /// there once moved. Idempotent.
    pub(crate) async fn migrate_secrets(&self) -> Result<(), Error> {
        let old = self.store().range(record::SECRETS).await?;
        for kv in old.kvs {
            let rest = &kv.key[record::SECRETS.len()..];
            let Some((app, secret)) = rest.split_once('/') else { continue };
            let (Ok(()), Ok(key)) = (validate_name(app), Key::parse(secret)) else {
                tracing::warn!(
                    key = kv.key,
                    "An old app secret has a name config cannot hold; left in place."
                );
                continue;
            };
            let value = String::from_utf8_lossy(&kv.value).into_owned();
            let layer = Layer::of(scope(app));
            if let Err(e) = self.inner.config.set(&layer, &key, serde_json::Value::String(value), true).await
            {
                tracing::warn!(key = kv.key, error = %chain(&e), "Cannot move an old app secret into config; left in place.");
                continue;
            }
            let txn = Txn::new()
                .when(Compare::mod_revision(kv.key.clone(), kv.mod_revision))
                .and_then(Op::Delete { key: kv.key.clone() });
            self.store().txn(txn).await?;
            tracing::info!(app, secret, "Moved an app secret into config.");
        }
        Ok(())
    }
}

/// An app's config as resolved: the values, and the config revision told
/// to consumers (`Config::changes`) just before they were read.
pub(crate) struct AppConfig {
    pub(crate) values: BTreeMap<String, String>,
    pub(crate) seen: hearth_store::Revision,
}

/// An app version's `hearth.toml` `[config]` as a config layer. A name
/// config cannot hold as a key is left out, with a warning.
fn base(name: &str, manifest: &Manifest) -> Base {
    let label = format!("hearth.toml (app {name})");
    let mut values = Vec::new();
    for (k, v) in &manifest.config {
        match Key::parse(k) {
            Ok(key) => values.push((key, serde_json::Value::String(v.clone()))),
            Err(e) => tracing::warn!(app = name, error = %e, "A config variable of hearth.toml is left out."),
        }
    }
    Base { label, values }
}

/// A secret's name follows the manifest's rules.
fn validate_secret_name(secret: &str) -> Result<(), Error> {
    Manifest::parse(&format!("secrets = [{secret:?}]")).map(drop).map_err(|e| match e {
        Error::Manifest(m) => Error::Invalid(m),
        other => other,
    })
}
