//! The OpenAPI document, generated from the handlers' annotations.
//!
//! A copy is checked in at `crates/api/openapi.json`; a test fails when the
//! two drift. Regenerate it with `make openapi`.

use std::sync::OnceLock;

use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::server::{
    alerts, apps, config, events, files, hosts, images, kv, leases, machines, networks, series, services,
    system, triggers, ui, workflows,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hearth",
        description = "The hearth daemon's API. On the Unix socket no authentication is needed; on TCP every request needs `Authorization: Bearer TOKEN` (`hearth token` prints it). On the dashboard's listener (`hearth serve --ui`) the token works too, and so does a dashboard session's cookie (see the `ui` tag). Every error has the body `{\"error\": {\"code\", \"message\", \"hint\"}}`.",
        license(name = "Apache-2.0")
    ),
    // What the events stream's `data` holds (see `EventFrame`).
    components(schemas(hearth_client::types::StreamedEvent)),
    paths(
        system::status, system::openapi, system::metrics,
        kv::list, kv::get, kv::put, kv::delete,
        hosts::list, hosts::get, hosts::drain, hosts::undrain, hosts::forget,
        leases::grant, leases::list, leases::keep_alive, leases::revoke,
        events::events,
        machines::list, machines::create, machines::get, machines::remove, machines::start, machines::stop,
        machines::sleep, machines::wake,
        triggers::machine_list, triggers::machine_add, triggers::machine_remove,
        machines::logs, machines::exec, files::put, files::get,
        machines::snapshot, machines::snapshots, machines::restore, machines::remove_snapshot,
        images::list, images::get, images::remove, images::pull, images::build,
        networks::list, networks::get, networks::create, networks::remove,
        apps::list, apps::get, apps::deploy, apps::deploy_source, apps::source, apps::rollback, apps::remove, apps::set_secret, apps::logs,
        workflows::list, workflows::get, workflows::deploy, workflows::remove, workflows::start,
        workflows::runs, workflows::show, workflows::signal, workflows::cancel, workflows::migrate, workflows::logs,
        workflows::result,
        triggers::app_list, triggers::app_add, triggers::app_remove,
        triggers::workflow_list, triggers::workflow_add, triggers::workflow_remove,
        networks::faults, networks::create_fault, networks::heal, networks::heal_all,
        crate::labs::list, crate::labs::get, crate::labs::put, crate::labs::remove,
        services::list, services::get, services::create, services::scale, services::deploy, services::remove, services::endpoints,
        services::register, services::heartbeat, services::deregister, services::history,
        config::get, config::entries, config::set, config::remove, config::import, config::history, config::diff,
        config::rollback, config::schemas, config::set_schema, config::remove_schema, config::key, config::rekey,
        config::watch,
        alerts::list, alerts::rules, alerts::apply, alerts::set_rule, alerts::remove_rule, alerts::silences,
        alerts::add_silence, alerts::expire_silence, alerts::history,
        series::list, series::query,
        ui::login_code, ui::session, ui::sign_out, ui::sessions, ui::revoke_all, ui::revoke,
    ),
    modifiers(&BearerAuth, &Limits),
    security(("bearer" = [])),
    tags(
        (name = "system", description = "The daemon itself"),
        (name = "kv", description = "The user key space of the state store"),
        (name = "hosts", description = "The daemons sharing the store, the one that leads, and draining"),
        (name = "leases", description = "TTLs that keys can be attached to"),
        (name = "events", description = "Every change in the store"),
        (name = "machines", description = "Linux microVMs"),
        (name = "images", description = "Root file systems for machines"),
        (name = "networks", description = "Private networks with addresses, DNS and NAT"),
        (name = "apps", description = "WebAssembly HTTP components"),
        (name = "workflows", description = "Durable workflows and their runs"),
        (name = "faults", description = "Partitions, delay and loss, on purpose"),
        (name = "labs", description = "Machines and networks brought up together from a lab file"),
        (name = "config", description = "Layered configuration: files, global, scopes and overrides; secrets, schemas, history"),
        (name = "alerts", description = "Rules over events, logs and metrics; alerts, silences and the notification history"),
        (name = "services", description = "The registry: services of machines, registered instances and apps, with health checks"),
        (name = "ui", description = "The dashboard's sign-in links and sessions (`hearth ui`): a session's cookie is accepted on the dashboard's own listener, where requests that change something also need its `X-CSRF-Token`"),
        (name = "metrics", description = "hearth's own time series: request rates, errors, latency, health, CPU, memory, sampled every interval"),
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

/// What every operation may answer beyond its own responses, and the
/// limits the daemon checks on path parameters: written once here, so the
/// document cannot forget an operation.
struct Limits;

impl utoipa::Modify for Limits {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
                &mut item.options,
            ]
            .into_iter()
            .flatten()
            {
                limit_operation(path, operation);
            }
        }
    }
}

fn error_response(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
    ResponseBuilder::new().description(description).content("application/json", content).build().into()
}

fn limit_operation(path: &str, operation: &mut utoipa::openapi::path::Operation) {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::{RefOr, Schema};

    let responses = &mut operation.responses.responses;
    let mut add = |status: &str, description: &str| {
        responses.entry(status.to_owned()).or_insert_with(|| error_response(description));
    };
    add("401", "No valid bearer token: on TCP every request needs `Authorization: Bearer TOKEN`");
    if operation.request_body.is_some() {
        add(
            "413",
            "The body is over the endpoint's limit (1 MiB of JSON; deploys: 90 MiB for apps, 45 MiB for workflows)",
        );
        add("415", "The body is not `application/json`");
    }
    if path.contains('{') {
        add("400", "A path parameter is too long, not UTF-8, or not a valid name");
    }
    for parameter in operation.parameters.iter_mut().flatten() {
        if parameter.parameter_in != ParameterIn::Path {
            continue;
        }
        let Some(RefOr::T(Schema::Object(schema))) = parameter.schema.as_mut() else { continue };
        let (max, pattern) = path_limit(path, &parameter.name);
        schema.max_length = max;
        schema.pattern = pattern.map(str::to_owned);
    }
}

/// The longest value and the pattern of a path parameter, as the daemon
/// checks them (`extract::ApiPath`, the store's key limit, the name rules).
fn path_limit(path: &str, parameter: &str) -> (Option<usize>, Option<&'static str>) {
    const LABEL: &str = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";
    const RUN_ID: &str = "^[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,127}$";
    let checked = ["/v1/apps/", "/v1/workflows/", "/v1/runs/"].iter().any(|p| path.starts_with(p));
    match parameter {
        "key" if path.starts_with("/v1/kv/") => {
            (Some(hearth_store::limits::MAX_KEY_LEN - crate::server::kv::NAMESPACE.len()), None)
        }
        "name" if checked => (Some(63), Some(LABEL)),
        "id" if path.starts_with("/v1/runs/") => (Some(128), Some(RUN_ID)),
        _ if checked => (Some(crate::extract::MAX_PATH_PARAM), None),
        _ => (None, None),
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
