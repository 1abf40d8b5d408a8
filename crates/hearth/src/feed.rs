//! What joins config to machines: each machine's merged config, rendered
//! as the files its agent keeps (`/run/hearth/config.json` and
//! `config.env`), and the signal that config moved.

use std::sync::Arc;

use async_trait::async_trait;
use hearth_config::{Config, Scope};
use hearth_machines::{ConfigFeed, ConfigPayload};
use hearth_store::Store;

/// A machine reads its own scope; a machine of a service (`web-2` of the
/// service `web`, kept by it) reads the service's scope under its own.
pub(crate) struct MachineConfig {
    pub(crate) config: Config,
    pub(crate) store: Arc<dyn Store>,
}

#[async_trait]
impl ConfigFeed for MachineConfig {
    async fn payload(&self, machine: &str) -> Result<ConfigPayload, String> {
        let mut scopes = Vec::with_capacity(2);
        if let Some(service) = hearth_services::record::service_of_machine(self.store.as_ref(), machine).await
        {
            scopes.push(Scope::Service(service));
        }
        scopes.push(Scope::Machine(machine.to_owned()));
        let resolved = self.config.resolve_nested(&scopes).await.map_err(|e| hearth_store::chain(&e))?;
        Ok(ConfigPayload {
            json: resolved.json().into_bytes(),
            env: resolved.env().into_bytes(),
            revision: resolved.revision,
        })
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.config.changes()
    }
}
