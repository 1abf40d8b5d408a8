//! An app's secrets (`apps/secrets/NAME/SECRET`): set, deleted and listed
//! by name, and resolved into the config a version sees; a running app that
//! declares a secret sees its new value from its next request.

use std::collections::BTreeMap;

use crate::Error;
use crate::manifest::Manifest;
use crate::record::{self, validate_name};
use crate::service::{Apps, lock};

impl Apps {
    /// Sets a secret of an app (which need not be deployed yet). A running
    /// app that declares it sees the new value from its next request.
    pub async fn set_secret(&self, name: &str, secret: &str, value: String) -> Result<(), Error> {
        validate_name(name)?;
        validate_secret_name(secret)?;
        let key = format!("{}{secret}", record::secrets_prefix(name));
        self.store().put(&key, value.into_bytes(), None).await?;
        self.refresh_config(name).await
    }

    /// Deletes a secret. An app that declares it keeps the value it has
    /// loaded until it is redeployed (which then fails until it is set).
    pub async fn delete_secret(&self, name: &str, secret: &str) -> Result<bool, Error> {
        validate_name(name)?;
        validate_secret_name(secret)?;
        let key = format!("{}{secret}", record::secrets_prefix(name));
        Ok(self.store().delete(&key).await?.1)
    }

    /// The names of an app's secrets (never their values).
    pub async fn secrets(&self, name: &str) -> Result<Vec<String>, Error> {
        validate_name(name)?;
        let prefix = record::secrets_prefix(name);
        let range = self.store().range(&prefix).await?;
        Ok(range.kvs.into_iter().map(|kv| kv.key[prefix.len()..].to_owned()).collect())
    }

    async fn refresh_config(&self, name: &str) -> Result<(), Error> {
        let guard = self.app_lock(name);
        let _held = guard.lock().await;
        let Some((app, _)) = self.find(name).await? else { return Ok(()) };
        let current = lock(&self.inner.loaded)
            .get(name)
            .and_then(|e| Some((e.serving.clone().ok()?, e.guards.clone())));
        let (Some((loaded, guards)), Some(version)) = (current, app.active_version()) else { return Ok(()) };
        if version.manifest.secrets.is_empty() || loaded.ctx.version != version.number {
            return Ok(());
        }
        let config = self.resolve_config(name, &version.manifest).await?;
        let refreshed = self.loaded(&app, version, config, loaded.ctx.limits, loaded.pre.clone());
        self.install(name, self.routes_of(&app), Ok(refreshed), guards);
        Ok(())
    }

    /// The manifest's config with the app's secrets added.
    pub(crate) async fn resolve_config(
        &self,
        name: &str,
        manifest: &Manifest,
    ) -> Result<BTreeMap<String, String>, Error> {
        let mut config = manifest.config.clone();
        if manifest.secrets.is_empty() {
            return Ok(config);
        }
        let prefix = record::secrets_prefix(name);
        let range = self.store().range(&prefix).await?;
        for secret in &manifest.secrets {
            let value = range
                .kvs
                .iter()
                .find(|kv| kv.key[prefix.len()..] == *secret)
                .ok_or_else(|| Error::MissingSecret { app: name.to_owned(), secret: secret.clone() })?;
            config.insert(secret.clone(), String::from_utf8_lossy(&value.value).into_owned());
        }
        Ok(config)
    }
}

/// A secret's name follows the manifest's rules.
fn validate_secret_name(secret: &str) -> Result<(), Error> {
    Manifest::parse(&format!("secrets = [{secret:?}]")).map(drop).map_err(|e| match e {
        Error::Manifest(m) => Error::Invalid(m),
        other => other,
    })
}
