//! The OpenAPI document, generated from the handlers' annotations.
//!
//! A copy is checked in at `crates/api/openapi.json`; a test fails when the
//! two drift. Regenerate it with `make openapi`.

use std::sync::OnceLock;

use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::server::{
    apps, events, files, images, kv, leases, machines, networks, system, triggers, workflows,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hearth",
        description = "The hearth daemon's API. On the Unix socket no authentication is needed; on TCP every request needs `Authorization: Bearer TOKEN` (`hearth token` prints it). Every error has the body `{\"error\": {\"code\", \"message\", \"hint\"}}`.",
        license(name = "Apache-2.0")
    ),
    paths(
        system::status, system::openapi, system::metrics,
        kv::list, kv::get, kv::put, kv::delete,
        leases::grant, leases::list, leases::keep_alive, leases::revoke,
        events::events,
        machines::list, machines::create, machines::get, machines::remove, machines::start, machines::stop,
        machines::logs, machines::exec, files::put, files::get,
        machines::snapshot, machines::snapshots, machines::restore, machines::remove_snapshot,
        images::list, images::get, images::remove, images::pull, images::build,
        networks::list, networks::get, networks::create, networks::remove,
        apps::list, apps::get, apps::deploy, apps::rollback, apps::remove, apps::set_secret, apps::logs,
        workflows::list, workflows::get, workflows::deploy, workflows::remove, workflows::start,
        workflows::runs, workflows::show, workflows::signal, workflows::cancel, workflows::migrate, workflows::logs,
        workflows::result,
        triggers::app_list, triggers::app_add, triggers::app_remove,
        triggers::workflow_list, triggers::workflow_add, triggers::workflow_remove,
        networks::faults, networks::create_fault, networks::heal, networks::heal_all,
        crate::labs::list, crate::labs::get, crate::labs::put, crate::labs::remove,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "system", description = "The daemon itself"),
        (name = "kv", description = "The user key space of the state store"),
        (name = "leases", description = "TTLs that keys can be attached to"),
        (name = "events", description = "Every change in the store"),
        (name = "machines", description = "Linux microVMs"),
        (name = "images", description = "Root file systems for machines"),
        (name = "networks", description = "Private networks with addresses, DNS and NAT"),
        (name = "apps", description = "WebAssembly HTTP components"),
        (name = "workflows", description = "Durable workflows and their runs"),
        (name = "faults", description = "Partitions, delay and loss, on purpose"),
        (name = "labs", description = "Machines and networks brought up together from a lab file"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document, as pretty-printed JSON with a trailing newline.
pub fn document_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        doc.info.version = crate::VERSION.to_owned();
        let mut text = doc.to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        text.push('\n');
        text
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// The checked-in document must match what the code generates. Run
    /// `make openapi` (HEARTH_UPDATE_OPENAPI=1) after changing the API.
    #[test]
    fn checked_in_openapi_matches_the_code() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
        let generated = super::document_json();
        if std::env::var_os("HEARTH_UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, generated).expect("write openapi.json");
            return;
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "{} is out of date with the code; run `make openapi` and commit the result",
            path.display()
        );
    }

    #[test]
    fn document_lists_every_endpoint() {
        let doc: serde_json::Value = serde_json::from_str(super::document_json()).expect("valid JSON");
        let paths = doc["paths"].as_object().expect("paths");
        for path in ["/v1/status", "/v1/kv", "/v1/kv/{key}", "/v1/leases", "/v1/events", "/metrics"] {
            assert!(paths.contains_key(path), "missing {path}");
        }
    }
}
