//! `/v1/services`: the registry of everything that serves: services of
//! machines, registered instances, and apps.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use hearth_client::types::{
    CreateService, DeployService, Endpoint, Endpoints, EndpointsQuery, ErrorBody, Health, HealthChange,
    Heartbeat, RegisterInstance, Rollout, RolloutState, ScaleService, Service, ServiceDetail, ServiceEvent,
    ServiceHistory, ServiceInstance, ServiceKind, ServiceList,
};
use hearth_services::check::CheckSpec;
use hearth_services::record::{self, HealthRecord, InstanceRecord, ServiceRecord, Status};

use super::AppState;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};

/// How long a blocking query waits when it does not say.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

fn health(status: Status) -> Health {
    match status {
        Status::Passing => Health::Passing,
        Status::Warning => Health::Warning,
        Status::Critical => Health::Critical,
        Status::Sleeping => Health::Sleeping,
    }
}

fn service(record: &ServiceRecord, instances: &[(InstanceRecord, Option<HealthRecord>)]) -> Service {
    let machines = record.kind == record::Kind::Machines;
    Service {
        name: record.name.clone(),
        kind: if machines { ServiceKind::Machines } else { ServiceKind::Registered },
        image: record.template.as_ref().map(|t| t.image.clone()),
        count: machines.then_some(record.count),
        port: machines.then_some(record.port),
        ports: record.ports.iter().map(|p| format!("{}:{}", p.host, p.guest)).collect(),
        checks: record.checks.iter().map(ToString::to_string).collect(),
        instances: instances.len() as u32,
        passing: instances
            .iter()
            .filter(|(_, h)| h.as_ref().is_some_and(|h| h.status == Status::Passing))
            .count() as u32,
        sleeping: instances
            .iter()
            .filter(|(_, h)| h.as_ref().is_some_and(|h| h.status == Status::Sleeping))
            .count() as u32,
        routes: record.routes.iter().map(ToString::to_string).collect(),
        tags: record.meta.tags.clone(),
        description: record.meta.description.clone(),
        links: record.meta.links.clone(),
        created_at: record.created_at,
        problem: None,
        version: machines.then_some(record.version),
        rollout: record.rollout.as_ref().map(|r| Rollout {
            from: r.from,
            to: r.to,
            state: match r.state {
                record::RolloutState::Rolling => RolloutState::Rolling,
                record::RolloutState::Done => RolloutState::Done,
                record::RolloutState::RolledBack => RolloutState::RolledBack,
            },
            reason: r.reason.clone(),
        }),
        sleep_after_secs: record.template.as_ref().and_then(|t| t.sleep_after_secs),
    }
}

fn app(info: &hearth_apps::AppInfo) -> Service {
    Service {
        name: info.app.name.clone(),
        kind: ServiceKind::App,
        image: None,
        count: None,
        port: None,
        ports: vec![],
        checks: vec![],
        instances: 1,
        passing: u32::from(info.serving.is_some()),
        sleeping: 0,
        routes: info.urls.clone(),
        tags: vec![],
        description: None,
        links: Default::default(),
        created_at: info.app.updated_at / 1000,
        problem: info.error.clone(),
        version: Some(info.app.active),
        rollout: None,
        sleep_after_secs: None,
    }
}

fn instance(i: &InstanceRecord, h: Option<&HealthRecord>, service_checks: &[CheckSpec]) -> ServiceInstance {
    let checks = if i.checks.is_empty() { service_checks } else { &i.checks };
    ServiceInstance {
        id: i.id.clone(),
        address: i.address.map(|a| a.to_string()),
        port: i.port,
        machine: i.machine.clone(),
        health: h.map_or(Health::Critical, |h| health(h.status)),
        output: h.map_or_else(|| "not checked yet".to_string(), |h| h.output.clone()),
        since_ms: h.map(|h| h.since_ms),
        ttl_s: i.ttl_s,
        checks: checks.iter().map(ToString::to_string).collect(),
        tags: i.tags.clone(),
        changes: h
            .map(|h| {
                h.changes
                    .iter()
                    .map(|c| HealthChange {
                        at_ms: c.at_ms,
                        health: health(c.status),
                        output: c.output.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        version: i.machine.as_ref().map(|_| i.version),
        draining: i.draining_since_ms.is_some(),
    }
}

/// Refuses a reload action the agent could not carry out.
fn reload_action(action: Option<&str>) -> Result<(), ApiError> {
    match action.map(hearth_machines::record::validate_on_config_change) {
        Some(Err(message)) => {
            Err(bad("on_config_change", message, "give a signal (SIGHUP) or a command ('nginx -s reload')"))
        }
        _ => Ok(()),
    }
}

fn bad(field: &str, message: String, hint: &str) -> ApiError {
    ApiError::bad_request("invalid_field", format!("field `{field}`: {message}"), hint)
}

fn checks(texts: &[String]) -> Result<Vec<CheckSpec>, ApiError> {
    texts
        .iter()
        .map(|t| {
            t.parse()
                .map_err(|e| bad("checks", e, "e.g. http:/healthz, tcp, exec:pg_isready, with ,interval=2s"))
        })
        .collect()
}

fn routes(texts: &[String]) -> Result<Vec<record::Route>, ApiError> {
    texts
        .iter()
        .map(|t| {
            record::Route::parse(t).map_err(|e| {
                bad("routes", e.to_string(), "give HOST or HOST/PATH, e.g. --route shop.example.test/api")
            })
        })
        .collect()
}

/// Who holds a route on the ingress: an app or a service, by name.
struct Holder {
    kind: &'static str,
    name: String,
}

/// Refuses a route the app or service `owner` would answer on (its own
/// `NAME.DOMAIN` and `routes`) that another app or service holds already:
/// apps and services share one ingress, so one route has one owner.
pub(crate) async fn routes_free(
    state: &AppState,
    owner: &str,
    routes: &[record::Route],
) -> Result<(), ApiError> {
    let domain = state.apps().domain().to_owned();
    let mine: Vec<record::Route> =
        std::iter::once(record::Route::default_for(owner, &domain)).chain(routes.iter().cloned()).collect();
    let mut held: Vec<(record::Route, Holder)> = Vec::new();
    for info in state.apps().list().await? {
        let name = info.app.name;
        held.push((record::Route::default_for(&name, &domain), Holder { kind: "app", name: name.clone() }));
        held.extend(info.app.routes.into_iter().map(|r| (r, Holder { kind: "app", name: name.clone() })));
    }
    for service in state.services().list().await? {
        let name = service.name;
        held.push((
            record::Route::default_for(&name, &domain),
            Holder { kind: "service", name: name.clone() },
        ));
        held.extend(service.routes.into_iter().map(|r| (r, Holder { kind: "service", name: name.clone() })));
    }
    let taken = held.iter().find(|(route, holder)| holder.name != owner && mine.contains(route));
    if let Some((route, Holder { kind, name })) = taken {
        let hint = match *kind {
            "app" => format!(
                "pick another route, or take it from the app first: deploy {name} again without it (its routes: `hearth app inspect {name}`)"
            ),
            _ => format!(
                "pick another route, or take it from the service first: `hearth service deploy {name} --route …` with the routes it keeps (see `hearth service inspect {name}`)"
            ),
        };
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "route_taken",
            format!("the route {route} already belongs to {kind} {name:?}"),
            hint,
        ));
    }
    Ok(())
}

/// Refuses a service name an app already has: both answer as `NAME`.
async fn not_an_app(state: &AppState, name: &str) -> Result<(), ApiError> {
    if state.apps().get(name).await.is_ok() {
        return Err(ApiError::conflict(
            format!("the name {name:?} is taken by an app"),
            "pick another name; an app is already a service under its own name (`hearth service ls`)",
        ));
    }
    Ok(())
}

/// Lists every service: of machines, registered, and apps.
#[utoipa::path(get, path = "/v1/services", tag = "services", responses((status = 200, body = ServiceList)))]
pub(crate) async fn list(State(state): State<AppState>) -> Result<axum::Json<ServiceList>, ApiError> {
    let mut services = Vec::new();
    for record in state.services().list().await? {
        let view = match state.services().view(&record.name).await {
            Ok(view) => view,
            Err(hearth_services::Error::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut described = service(&view.record, &view.instances);
        described.problem = state.networks().service_port_problem(&record.name);
        services.push(described);
    }
    for info in state.apps().list().await? {
        services.push(app(&info));
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(axum::Json(ServiceList { services }))
}

/// Shows a service with every instance, passing or not, and their health.
#[utoipa::path(get, path = "/v1/services/{name}", tag = "services",
    params(("name" = String, Path)), responses((status = 200, body = ServiceDetail), (status = 404, body = ErrorBody)))]
pub(crate) async fn get(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<axum::Json<ServiceDetail>, ApiError> {
    match state.services().view(&name).await {
        Ok(view) => {
            let instances =
                view.instances.iter().map(|(i, h)| instance(i, h.as_ref(), &view.record.checks)).collect();
            let mut described = service(&view.record, &view.instances);
            described.problem = state.networks().service_port_problem(&name);
            Ok(axum::Json(ServiceDetail { service: described, instances }))
        }
        Err(hearth_services::Error::NotFound(_)) if state.apps().get(&name).await.is_ok() => {
            let info = state.apps().get(&name).await?;
            Ok(axum::Json(ServiceDetail { service: app(&info), instances: vec![] }))
        }
        Err(e) => Err(e.into()),
    }
}

/// Creates a service of machines: hearth keeps `count` machines of the
/// image running, checked, and replaced when they fail.
#[utoipa::path(post, path = "/v1/services", tag = "services", request_body = CreateService,
    responses((status = 201, body = Service), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateService>,
) -> Result<(StatusCode, axum::Json<Service>), ApiError> {
    not_an_app(&state, &body.name).await?;
    let declared = routes(&body.routes)?;
    routes_free(&state, &body.name, &declared).await?;
    for kv in &body.env {
        if !kv.contains('=') || kv.starts_with('=') {
            return Err(bad("env", format!("{kv:?} is not KEY=VALUE"), "e.g. --env PORT=8080"));
        }
    }
    reload_action(body.on_config_change.as_deref())?;
    let sleep_after = body.sleep_after.as_deref().map(super::machines::parse_sleep_after).transpose()?;
    let request = hearth_services::CreateService {
        name: body.name,
        template: record::Template {
            image: body.image,
            cpus: body.cpus.unwrap_or(1),
            memory_mib: body.memory_mib.unwrap_or(512),
            command: body.command,
            env: body.env,
            network: body.network,
            on_config_change: body.on_config_change,
            sleep_after_secs: sleep_after.map(|d| d.as_secs()),
        },
        count: body.count.unwrap_or(1),
        port: body.port,
        checks: checks(&body.checks)?,
        ports: body
            .ports
            .iter()
            .map(|p| {
                let text = if p.contains(':') { p.clone() } else { format!("{p}:{}", body.port) };
                text.parse().map_err(|e| bad("ports", e, "e.g. 8080:80, or 8080 for the service's port"))
            })
            .collect::<Result<_, _>>()?,
        routes: declared,
        meta: record::Meta { tags: body.tags, description: body.description, links: body.links },
    };
    let created = state.services().create(request).await?;
    Ok((StatusCode::CREATED, axum::Json(service(&created, &[]))))
}

/// Sets how many machines a service of machines keeps.
#[utoipa::path(put, path = "/v1/services/{name}/count", tag = "services", request_body = ScaleService,
    params(("name" = String, Path)),
    responses((status = 200, body = Service), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn scale(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<ScaleService>,
) -> Result<axum::Json<Service>, ApiError> {
    state.services().scale(&name, body.count).await?;
    let view = state.services().view(&name).await?;
    Ok(axum::Json(service(&view.record, &view.instances)))
}

/// Starts a rolling update to a new image, environment or command: one
/// new instance at a time, each old one drained once the new ones pass; a
/// new instance that never passes puts the old version back.
#[utoipa::path(post, path = "/v1/services/{name}/deploy", tag = "services", request_body = DeployService,
    params(("name" = String, Path)),
    responses((status = 200, body = Service), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn deploy(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<DeployService>,
) -> Result<axum::Json<Service>, ApiError> {
    for kv in body.env.iter().flatten() {
        if !kv.contains('=') || kv.starts_with('=') {
            return Err(bad("env", format!("{kv:?} is not KEY=VALUE"), "e.g. --env PORT=8080"));
        }
    }
    reload_action(body.on_config_change.as_deref())?;
    let sleep_after = match body.sleep_after.as_deref() {
        None => None,
        Some("never") => Some(None),
        Some(text) => Some(Some(super::machines::parse_sleep_after(text)?.as_secs())),
    };
    let declared = body.routes.as_deref().map(routes).transpose()?;
    if let Some(declared) = &declared {
        state.services().get(&name).await?;
        routes_free(&state, &name, declared).await?;
    }
    let change = hearth_services::Deploy {
        image: body.image,
        env: body.env,
        command: body.command,
        cpus: body.cpus,
        memory_mib: body.memory_mib,
        routes: declared,
        on_config_change: body.on_config_change,
        sleep_after_secs: sleep_after,
    };
    state.services().deploy(&name, change).await?;
    let view = state.services().view(&name).await?;
    Ok(axum::Json(service(&view.record, &view.instances)))
}

/// Removes a service, its machines and its records.
#[utoipa::path(delete, path = "/v1/services/{name}", tag = "services",
    params(("name" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.services().remove(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The passing instances. With `index`, waits up to `wait` for the set to
/// change after that revision, and wakes only for a real change.
#[utoipa::path(get, path = "/v1/services/{name}/endpoints", tag = "services",
    params(("name" = String, Path), EndpointsQuery),
    responses((status = 200, body = Endpoints), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn endpoints(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<EndpointsQuery>,
) -> Result<axum::Json<Endpoints>, ApiError> {
    let wait = match query.wait.as_deref() {
        None => DEFAULT_WAIT,
        Some(text) => humantime::parse_duration(text)
            .map_err(|_| bad("wait", format!("{text:?} is not a duration"), "e.g. wait=30s"))?,
    };
    if wait > hearth_services::MAX_WAIT {
        return Err(bad(
            "wait",
            format!("{} s is longer than the 300 s a query may wait", wait.as_secs()),
            "e.g. wait=60s",
        ));
    }
    let found = match query.index {
        Some(index) => {
            tokio::select! {
                found = state.services().wait_endpoints(&name, index, wait) => found?,
                () = state.shutting_down() => return Err(ApiError::unavailable("the daemon is shutting down")),
            }
        }
        None => state.services().endpoints(&name).await?,
    };
    Ok(axum::Json(Endpoints {
        name: found.value.name,
        index: found.index,
        instances: found
            .value
            .instances
            .into_iter()
            .map(|e| Endpoint {
                id: e.id,
                address: e.address.to_string(),
                port: e.port,
                sleeping: e.sleeping,
            })
            .collect(),
        routes: found.value.routes.iter().map(ToString::to_string).collect(),
    }))
}

/// Registers an instance under a TTL (creating the service if needed); it
/// is gone when heartbeats stop for that long.
#[utoipa::path(post, path = "/v1/services/{name}/instances", tag = "services", request_body = RegisterInstance,
    params(("name" = String, Path)),
    responses((status = 201, body = ServiceInstance), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn register(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<RegisterInstance>,
) -> Result<(StatusCode, axum::Json<ServiceInstance>), ApiError> {
    not_an_app(&state, &name).await?;
    let declared = body.routes.as_deref().map(routes).transpose()?;
    // Its own `NAME.DOMAIN` too: an app may have declared that host.
    routes_free(&state, &name, declared.as_deref().unwrap_or_default()).await?;
    let address = body
        .address
        .parse()
        .map_err(|_| bad("address", format!("{:?} is not an IP address", body.address), "e.g. 127.0.0.1"))?;
    let request = hearth_services::Register {
        id: body.id,
        address,
        port: body.port,
        ttl_s: body.ttl_s,
        checks: checks(&body.checks)?,
        tags: body.tags,
        routes: declared,
    };
    // The health it starts with, not as read back: its checker may
    // already have run.
    let (registered, health) = state.services().register(&name, request).await?;
    Ok((StatusCode::CREATED, axum::Json(instance(&registered, Some(&health), &[]))))
}

/// Renews a registration's TTL, and sets its health if given.
#[utoipa::path(put, path = "/v1/services/{name}/instances/{id}/heartbeat", tag = "services", request_body = Heartbeat,
    params(("name" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    ApiPath((name, id)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<Heartbeat>,
) -> Result<StatusCode, ApiError> {
    let status = match body.health {
        None => None,
        Some(Health::Passing) => Some(Status::Passing),
        Some(Health::Warning) => Some(Status::Warning),
        Some(Health::Critical) => Some(Status::Critical),
        Some(Health::Sleeping) => {
            let why = "a registered instance cannot sleep: only a service's machines do".to_string();
            return Err(bad("health", why, "give passing, warning or critical"));
        }
    };
    state.services().heartbeat(&name, &id, status, body.output).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a registered instance at once.
#[utoipa::path(delete, path = "/v1/services/{name}/instances/{id}", tag = "services",
    params(("name" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn deregister(
    State(state): State<AppState>,
    ApiPath((name, id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.services().deregister(&name, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What the platform did by itself for a service (replacements, restarts,
/// failures), oldest first.
#[utoipa::path(get, path = "/v1/services/{name}/history", tag = "services",
    params(("name" = String, Path)), responses((status = 200, body = ServiceHistory), (status = 404, body = ErrorBody)))]
pub(crate) async fn history(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<axum::Json<ServiceHistory>, ApiError> {
    let entries = state
        .services()
        .history(&name)
        .await?
        .into_iter()
        .map(|e| ServiceEvent { at_ms: e.at_ms, instance: e.instance, action: e.action, reason: e.reason })
        .collect();
    Ok(axum::Json(ServiceHistory { entries }))
}
