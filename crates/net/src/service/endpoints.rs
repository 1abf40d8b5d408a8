//! Services' passing instances, read from the records the services crate
//! writes (`services/endpoints/NAME`) through a minimal view, so that this
//! crate does not depend on it, and turned into the DNS zone's services
//! and the ports services publish on the host (`publish`).
//!
//! An instance whose machine sleeps is in the record too: published ports
//! balance over it (a connection wakes it), but DNS leaves it out, since a
//! connection straight to its address would find nobody to answer.

use std::net::IpAddr;

use serde::Deserialize;

use super::{Error, Networks, PortSpec};
use crate::dns;

/// Where the services crate publishes each service's passing instances, one
/// record per service; the key is deleted with the service.
pub const ENDPOINTS: &str = "services/endpoints/";

/// What DNS and published ports need of an endpoints record; other fields
/// are ignored.
#[derive(Debug, Deserialize)]
struct EndpointsView {
    #[serde(default)]
    instances: Vec<InstanceView>,
    #[serde(default)]
    ports: Vec<PortSpec>,
}

/// One service as read from its endpoints record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ServiceEndpoints {
    pub(super) name: String,
    /// The passing (or sleeping) instances with an IP address.
    pub(super) instances: Vec<Endpoint>,
    /// Host ports balanced over the instances.
    pub(super) ports: Vec<PortSpec>,
}

/// One instance of a service's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Endpoint {
    pub(super) instance: dns::ServiceInstance,
    /// Its machine, for a service of machines.
    pub(super) machine: Option<String>,
    /// Its machine sleeps.
    pub(super) sleeping: bool,
}

impl ServiceEndpoints {
    /// What DNS answers for the service: its awake instances.
    pub(super) fn awake(&self) -> Vec<dns::ServiceInstance> {
        self.instances.iter().filter(|e| !e.sleeping).map(|e| e.instance.clone()).collect()
    }
}

#[derive(Debug, Deserialize)]
struct InstanceView {
    id: String,
    address: String,
    port: u16,
    #[serde(default)]
    machine: Option<String>,
    #[serde(default)]
    sleeping: bool,
}

impl Networks {
    /// Reads every endpoints record, puts the services in the zone and
    /// serves the ports they publish.
    pub(super) async fn refresh_services(&self) -> Result<(), Error> {
        let range = self.inner.store.range(ENDPOINTS).await?;
        let services: Vec<ServiceEndpoints> =
            range.kvs.iter().filter_map(|kv| service_from_record(&kv.key, &kv.value)).collect();
        self.inner.zone.set_services(services.iter().map(|s| (s.name.clone(), s.awake())).collect());
        self.sync_published(&services).await;
        Ok(())
    }
}

/// A service from its record, or `None` (logged) if the record cannot be
/// read. An instance whose address does not parse is left out: it could
/// not be reached anyway.
fn service_from_record(key: &str, value: &[u8]) -> Option<ServiceEndpoints> {
    let name = key.strip_prefix(ENDPOINTS)?;
    if let Err(error) = hearth_store::names::check_label("service", name, 63) {
        tracing::warn!(key, error, "Ignoring a service whose name cannot be a DNS name.");
        return None;
    }
    let view: EndpointsView = match serde_json::from_slice(value) {
        Ok(view) => view,
        Err(error) => {
            tracing::warn!(key, error = %error, "Ignoring an unreadable endpoints record.");
            return None;
        }
    };
    let instances = view
        .instances
        .into_iter()
        .filter_map(|instance| match instance.address.parse::<IpAddr>() {
            Ok(address) => Some(Endpoint {
                instance: dns::ServiceInstance { id: instance.id, address, port: instance.port },
                machine: instance.machine,
                sleeping: instance.sleeping,
            }),
            Err(_) => {
                tracing::warn!(
                    key,
                    id = instance.id,
                    address = instance.address,
                    "Ignoring an instance whose address is not an IP address."
                );
                None
            }
        })
        .collect();
    Some(ServiceEndpoints { name: name.to_owned(), instances, ports: view.ports })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoints_record_gives_its_instances_and_ignores_unknown_fields() {
        let value = br#"{"name":"web","kind":"machines","instances":[
            {"id":"web-1","address":"10.88.0.5","port":80,"health":"passing"},
            {"id":"web-2","address":"fd00::2","port":8080},
            {"id":"web-3","address":"not-an-ip","port":80}]}"#;
        let service = service_from_record("services/endpoints/web", value).expect("a service");
        assert_eq!(service.name, "web");
        assert!(service.ports.is_empty(), "no ports field is no published port");
        let ids: Vec<(&str, String, u16)> = service
            .instances
            .iter()
            .map(|e| (e.instance.id.as_str(), e.instance.address.to_string(), e.instance.port))
            .collect();
        assert_eq!(ids, [("web-1", "10.88.0.5".to_owned(), 80), ("web-2", "fd00::2".to_owned(), 8080)]);
    }

    #[test]
    fn a_sleeping_instance_is_balanced_over_but_not_answered_in_dns() {
        let value = br#"{"name":"web","instances":[
            {"id":"web-1","address":"10.88.0.5","port":80,"machine":"web-1","sleeping":true},
            {"id":"web-2","address":"10.88.0.6","port":80,"machine":"web-2"}]}"#;
        let service = service_from_record("services/endpoints/web", value).expect("a service");
        let sleeping: Vec<(Option<&str>, bool)> =
            service.instances.iter().map(|e| (e.machine.as_deref(), e.sleeping)).collect();
        assert_eq!(sleeping, [(Some("web-1"), true), (Some("web-2"), false)]);
        let answered: Vec<String> = service.awake().into_iter().map(|i| i.id).collect();
        assert_eq!(answered, ["web-2"]);
    }

    #[test]
    fn unreadable_records_and_names_are_left_out() {
        assert!(service_from_record("services/endpoints/web", b"{").is_none());
        assert!(service_from_record("services/endpoints/Web_1", br#"{"instances":[]}"#).is_none());
        assert!(service_from_record("services/endpoints/web", br#"{"instances":[{"id":"a"}]}"#).is_none());
        let service = service_from_record("services/endpoints/web", br#"{"name":"web"}"#).unwrap();
        assert!(service.instances.is_empty(), "no instances field is no passing instance");
    }

    #[test]
    fn an_endpoints_record_gives_its_published_ports() {
        let value = br#"{"name":"web","instances":[],"ports":[{"host":8080,"guest":80,"udp":false}]}"#;
        let service = service_from_record("services/endpoints/web", value).expect("a service");
        assert_eq!(service.ports, [PortSpec { host: 8080, guest: 80, udp: false }]);
    }
}
