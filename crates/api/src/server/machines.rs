//! `/v1/machines`: Linux microVMs.

use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hearth_client::types::{
    self as wire, CreateMachine, ErrorBody, LogsQuery, Machine, MachineList, MachineNic, MachineState,
    RemoveMachineQuery, RestoreSnapshot, Snapshot, SnapshotList, TakeSnapshot,
};
use hearth_machines::CreateRequest;
use hearth_machines::record::{self, Desired, MachineRecord, RestartPolicy, SnapshotRecord};
use hearth_machines::vmm::{Backend, console};

use super::AppState;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};

const DEFAULT_MEMORY_MIB: u32 = 512;

/// A machine's record as the wire shows it, with what this host observes
/// of it beyond the record, if it runs here.
fn described(state: &AppState, r: MachineRecord) -> Machine {
    let here = state.machines().runs_here(&r);
    let mut m = machine(r);
    if here {
        m.ports_problem = state.networks().forward_problem(&m.name);
    }
    m
}

/// A machine's record as the wire shows it.
pub(crate) fn machine(r: MachineRecord) -> Machine {
    let name = r.name.clone();
    Machine {
        name: r.name,
        host: r.host,
        image: r.spec.image,
        image_digest: r.spec.image_digest,
        backend: backend(r.spec.backend),
        cpus: r.spec.cpus,
        memory_mib: r.spec.memory_mib,
        entrypoint: r.spec.entrypoint,
        env: r.spec.env,
        workdir: r.spec.workdir,
        user: r.spec.user,
        restart: match r.spec.restart {
            RestartPolicy::No => wire::RestartPolicy::No,
            RestartPolicy::OnFailure => wire::RestartPolicy::OnFailure,
            RestartPolicy::Always => wire::RestartPolicy::Always,
        },
        main: r.status.main.map(|m| wire::MainProcess {
            state: match m.state {
                record::MainState::Running => wire::MainState::Running,
                record::MainState::Exited => wire::MainState::Exited,
                record::MainState::Restarting => wire::MainState::Restarting,
                record::MainState::FailedToStart => wire::MainState::FailedToStart,
            },
            pid: m.pid,
            exit_code: m.exit_code,
            signal: m.signal,
            restarts: m.restarts,
            started_at: m.started_at,
            error: m.error,
        }),
        on_config_change: r.spec.on_config_change,
        config: r.status.config.map(|c| wire::MachineConfig {
            revision: c.revision,
            applied_at: c.applied_at,
            reload_error: c.reload_error,
        }),
        desired: match r.desired {
            Desired::Running => wire::Desired::Running,
            Desired::Stopped => wire::Desired::Stopped,
            Desired::Sleeping => wire::Desired::Sleeping,
        },
        state: machine_state(r.status.state),
        phase: r.status.phase,
        reason: r.status.reason,
        pid: r.status.pid,
        boot_ms: r.status.boot_ms,
        kernel: r.status.kernel,
        auto_remove: r.spec.auto_remove,
        nics: r
            .spec
            .nics
            .iter()
            .map(|n| MachineNic {
                network: n.network.clone(),
                ip: n.ip.to_string(),
                mac: n.mac.clone(),
                tap: n.tap.clone(),
                dns_name: format!("{}.{}.hearth", name, n.network),
            })
            .collect(),
        ports: r.spec.ports.iter().map(ToString::to_string).collect(),
        ports_problem: None,
        disk_mib: r.spec.disk_mib,
        sleep_after_secs: r.spec.sleep_after_secs,
        created_at: r.created_at,
        started_at: r.status.started_at,
    }
}

/// A VMM backend as the wire names it.
pub(crate) fn backend(b: Backend) -> wire::Backend {
    match b {
        Backend::QemuTcg => wire::Backend::QemuTcg,
        Backend::QemuKvm => wire::Backend::QemuKvm,
        Backend::Firecracker => wire::Backend::Firecracker,
    }
}

/// A machine's state as the wire names it.
pub(crate) fn machine_state(state: record::State) -> MachineState {
    match state {
        record::State::Created => MachineState::Created,
        record::State::Starting => MachineState::Starting,
        record::State::Running => MachineState::Running,
        record::State::Stopping => MachineState::Stopping,
        record::State::Stopped => MachineState::Stopped,
        record::State::Failed => MachineState::Failed,
        record::State::Lost => MachineState::Lost,
        record::State::Sleeping => MachineState::Sleeping,
    }
}

/// A snapshot's record as the wire shows it.
fn snapshot_info(s: SnapshotRecord) -> Snapshot {
    Snapshot {
        name: s.name,
        machine: s.machine,
        host: s.host,
        image: s.spec.image,
        backend: backend(s.spec.backend),
        cpus: s.spec.cpus,
        memory_mib: s.spec.memory_mib,
        size_bytes: s.size_bytes,
        created_at: s.created_at,
    }
}

/// Lists machines.
#[utoipa::path(get, path = "/v1/machines", tag = "machines", responses((status = 200, body = MachineList)))]
pub(crate) async fn list(State(state): State<AppState>) -> Result<axum::Json<MachineList>, ApiError> {
    let machines = state.machines().list().await?;
    Ok(axum::Json(MachineList { machines: machines.into_iter().map(|m| described(&state, m)).collect() }))
}

/// Creates a machine and starts it, on the host `on` names or this one.
/// The answer comes at once, with state `created`; follow
/// `/v1/events?prefix=machines/NAME` to watch it boot.
#[utoipa::path(post, path = "/v1/machines", tag = "machines", request_body = CreateMachine,
    responses((status = 201, body = Machine), (status = 400, body = ErrorBody),
        (status = 404, description = "The image is not here", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody)))]
pub(crate) async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateMachine>,
) -> Result<(StatusCode, axum::Json<Machine>), ApiError> {
    let backend = body.backend.as_deref().map(|b| b.parse::<Backend>()).transpose().map_err(|e| {
        ApiError::bad_request(
            "invalid_field",
            format!("field `backend`: {e}"),
            "omit it to let hearth choose",
        )
    })?;
    if body.image.trim().is_empty() {
        return Err(ApiError::bad_request(
            "invalid_field",
            "field `image`: empty",
            "name an image from `hearth image ls`",
        ));
    }
    if body.command.as_ref().is_some_and(Vec::is_empty) {
        return Err(ApiError::bad_request(
            "invalid_field",
            "field `command`: empty",
            "give a program and its arguments, or omit it",
        ));
    }
    let ports = body
        .ports
        .iter()
        .map(|p| p.parse::<hearth_net::service::PortSpec>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_field",
                format!("field `ports`: {e}"),
                "e.g. 8080:80 or 5353:53/udp",
            )
        })?;
    let mut networks = Vec::new();
    for attachment in &body.networks {
        let ip = attachment.ip.as_deref().map(|ip| ip.parse::<std::net::Ipv4Addr>()).transpose().map_err(
            |_| {
                ApiError::bad_request(
                    "invalid_field",
                    format!(
                        "field `networks.ip`: {:?} is not an IPv4 address",
                        attachment.ip.as_deref().unwrap_or("")
                    ),
                    "e.g. 10.200.0.10",
                )
            },
        )?;
        networks.push((attachment.network.clone(), ip));
    }
    if body.no_network && !networks.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_field",
            "`no_network` and `networks` contradict each other",
            "give one or the other",
        ));
    }
    if !ports.is_empty() && body.no_network {
        return Err(ApiError::bad_request(
            "invalid_field",
            "ports can only be forwarded to a machine on a network",
            "drop `no_network`, or the ports",
        ));
    }
    let sleep_after = body.sleep_after.as_deref().map(parse_sleep_after).transpose()?;
    let restart = body.restart.as_deref().map(str::parse::<RestartPolicy>).transpose().map_err(|e| {
        ApiError::bad_request("invalid_field", format!("field `restart`: {e}"), "omit it for `no`")
    })?;
    let need = hearth_hosts::Need {
        memory_mib: u64::from(body.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB)),
        backend: backend.map(|b| b.as_str().to_owned()),
        siblings: std::collections::BTreeMap::new(),
    };
    let host = choose_host(&state, body.on, need).await?;
    state.services().check_published(&ports).await?;
    let service = match body.service.as_deref() {
        None => None,
        Some(text) => Some(service_spec(&state, text).await?),
    };
    let name = body.name.unwrap_or_else(generate_name);
    let rec = state
        .machines()
        .create(CreateRequest {
            name,
            image: body.image,
            backend,
            cpus: body.cpus.unwrap_or(1),
            memory_mib: body.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
            command: body.command,
            kernel: body.kernel.map(Into::into),
            auto_remove: body.auto_remove,
            start: !body.no_start,
            networks,
            no_network: body.no_network,
            ports,
            disk_mib: body.disk_mib,
            env: body.env,
            workdir: body.workdir,
            user: body.user,
            restart: restart.unwrap_or_default(),
            on_config_change: body.on_config_change,
            host: Some(host),
            sleep_after,
        })
        .await?;
    if let Some((service, port)) = service
        && let Err(error) = state.services().join(&service, port, &rec.name).await
    {
        // Nothing is left half-made: the machine goes again.
        let _ = state.machines().remove(&rec.name, true).await;
        return Err(error.into());
    }
    Ok((StatusCode::CREATED, axum::Json(machine(rec))))
}

/// The host a new machine runs on: the one `on` names, which must be
/// alive and not draining; or else the one [`hearth_hosts::place`] picks
/// from the hosts alive now and the machines they carry.
async fn choose_host(
    state: &AppState,
    on: Option<String>,
    need: hearth_hosts::Need,
) -> Result<String, ApiError> {
    let hosts = state.hosts().list().await?;
    let Some(host) = on else {
        // A backend no ready host lists is this host's to judge (its KVM
        // probe may be under way), with its own reason when it cannot.
        let listed = |b: &String| {
            hosts.iter().any(|h| h.state == hearth_hosts::State::Ready && h.record.backends.contains(b))
        };
        let this = state.machines().host_name();
        if need.backend.as_ref().is_some_and(|b| !listed(b))
            && hosts.iter().any(|h| h.record.name == this && h.state == hearth_hosts::State::Ready)
        {
            return Ok(this.to_owned());
        }
        return state.machines().place(&hosts, &need).await?.map_err(|e| {
            ApiError::new(
                StatusCode::CONFLICT,
                "no_host",
                e.to_string(),
                "ask for less memory, stop machines you do not need, undrain a host (`hearth host ls` shows them), or start another host",
            )
        });
    };
    record::validate_host(&host).map_err(|why| {
        ApiError::bad_request(
            "invalid_field",
            format!("field `on`: {why}"),
            "give the name of a host `hearth host ls` lists, or omit it to let hearth place the machine",
        )
    })?;
    match hosts.iter().find(|h| h.record.name == host).map(|h| h.state) {
        None => Err(ApiError::not_found(
            format!("no host is named {host:?}"),
            "`hearth host ls` lists the hosts; omit --on to let hearth place the machine",
        )),
        Some(hearth_hosts::State::Lost) => Err(ApiError::conflict(
            format!("host {host:?} is lost: its lease expired, so nothing can start there"),
            "pick another host with --on, or omit it to let hearth place the machine",
        )),
        Some(hearth_hosts::State::Draining) => Err(ApiError::conflict(
            format!("host {host:?} is draining: nothing new goes there"),
            format!("pick another host, or end the draining with `hearth host undrain {host}`"),
        )),
        Some(hearth_hosts::State::Ready) => Ok(host),
    }
}

/// Reads `NAME:PORT` for a machine that joins a service, and checks that
/// it may: an app's name or a service of machines may not be joined.
async fn service_spec(state: &AppState, text: &str) -> Result<(String, u16), ApiError> {
    let bad = |why: String| {
        ApiError::bad_request("invalid_field", format!("field `service`: {why}"), "e.g. web:8080")
    };
    let (name, port) = text.split_once(':').ok_or_else(|| bad(format!("{text:?} is not NAME:PORT")))?;
    let port =
        port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| bad(format!("{port:?} is not a port")))?;
    hearth_services::record::validate_name(name).map_err(bad)?;
    if state.apps().get(name).await.is_ok() {
        return Err(ApiError::conflict(
            format!("the name {name:?} is taken by an app"),
            "join a service with another name; an app is a service of its own",
        ));
    }
    match state.services().get(name).await {
        Ok(def) if def.kind == hearth_services::record::Kind::Machines => {
            Err(hearth_services::Error::NotRegistered(name.to_string()).into())
        }
        Ok(_) | Err(hearth_services::Error::NotFound(_)) => Ok((name.to_string(), port)),
        Err(e) => Err(e.into()),
    }
}

/// `sleep_after`: a duration of whole seconds, at least one.
pub(crate) fn parse_sleep_after(text: &str) -> Result<Duration, ApiError> {
    let bad = |why: String| {
        ApiError::bad_request("invalid_field", format!("field `sleep_after`: {why}"), "e.g. 30s, 5m or 1h")
    };
    let after =
        humantime::parse_duration(text).map_err(|e| bad(format!("{text:?} is not a duration: {e}")))?;
    if after < Duration::from_secs(1) || after.subsec_nanos() != 0 {
        return Err(bad(format!("{text:?} is not a whole number of seconds, at least one")));
    }
    Ok(after)
}

fn generate_name() -> String {
    const WORDS: &[&str] =
        &["ash", "birch", "cedar", "elm", "fir", "hazel", "larch", "maple", "oak", "pine", "rowan", "yew"];
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{:04x}", WORDS[nanos as usize % WORDS.len()], (nanos >> 8) & 0xffff)
}

/// Shows one machine.
#[utoipa::path(get, path = "/v1/machines/{name}", tag = "machines",
    params(("name" = String, Path)), responses((status = 200, body = Machine), (status = 404, body = ErrorBody)))]
pub(crate) async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<Machine>, ApiError> {
    Ok(axum::Json(described(&state, state.machines().get(&name).await?)))
}

/// Asks a machine to start.
#[utoipa::path(post, path = "/v1/machines/{name}/start", tag = "machines",
    params(("name" = String, Path)), responses((status = 200, body = Machine), (status = 404, body = ErrorBody)))]
pub(crate) async fn start(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<Machine>, ApiError> {
    Ok(axum::Json(machine(state.machines().start(&name).await?)))
}

/// Asks a machine to power off.
#[utoipa::path(post, path = "/v1/machines/{name}/stop", tag = "machines",
    params(("name" = String, Path)), responses((status = 200, body = Machine), (status = 404, body = ErrorBody)))]
pub(crate) async fn stop(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<Machine>, ApiError> {
    Ok(axum::Json(machine(state.machines().stop(&name).await?)))
}

/// Puts a running machine to sleep: its memory and devices are saved to
/// its host's disk and its VM stops. The answer comes at once, with
/// `desired` `sleeping`; the state becomes `sleeping` once it is saved.
#[utoipa::path(post, path = "/v1/machines/{name}/sleep", tag = "machines",
    params(("name" = String, Path)),
    responses((status = 200, body = Machine), (status = 404, body = ErrorBody),
        (status = 409, description = "Not running", body = ErrorBody)))]
pub(crate) async fn sleep(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<Machine>, ApiError> {
    Ok(axum::Json(machine(state.machines().sleep(&name).await?)))
}

/// Wakes a sleeping machine where it was, and answers once it runs (a
/// running machine is answered at once).
#[utoipa::path(post, path = "/v1/machines/{name}/wake", tag = "machines",
    params(("name" = String, Path)),
    responses((status = 200, body = Machine), (status = 404, body = ErrorBody),
        (status = 409, description = "Stopped, or it could not wake", body = ErrorBody)))]
pub(crate) async fn wake(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<Machine>, ApiError> {
    Ok(axum::Json(described(&state, state.machines().wake_and_wait(&name).await?)))
}

/// Removes a machine, its VM and its disk. Asked of another host than
/// the machine's, it removes the record, and the machine's host then
/// stops the VM and deletes the disk.
#[utoipa::path(delete, path = "/v1/machines/{name}", tag = "machines",
    params(("name" = String, Path), RemoveMachineQuery),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, description = "Running; use force", body = ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<RemoveMachineQuery>,
) -> Result<StatusCode, ApiError> {
    state.machines().remove(&name, query.force.unwrap_or(false)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The machine's logs: its serial console (what the kernel and the agent
/// printed) and its main process's output, each kept to the last 4 MiB or
/// so on the host (the log and one rotated file). `source` picks one or
/// both (labelled per line); `tail` lines are read from the end of each,
/// and `follow` goes on across rotations.
#[utoipa::path(get, path = "/v1/machines/{name}/logs", tag = "machines",
    params(("name" = String, Path), LogsQuery),
    responses((status = 200, description = "The logs", content_type = "text/plain"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "It runs on another host, which has its logs", body = ErrorBody)))]
pub(crate) async fn logs(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    let source = match query.source.as_deref() {
        None | Some("all") => console::Source::All,
        Some("console") => console::Source::Console,
        Some("main") => console::Source::Main,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_field",
                format!("`source`: {other:?} is not a log"),
                "give console, main or all",
            ));
        }
    };
    // The logs are files on the machine's host.
    state.machines().get_here(&name).await?;
    // The console holds the main process's lines too where it has no log
    // of its own (Firecracker): both are read whatever the source.
    let paths = [(true, state.machines().console_log(&name)), (false, state.machines().main_log(&name))];
    let tail = query.tail;
    let (head, followers) = tokio::task::spawn_blocking(move || {
        let mut head = Vec::new();
        let mut followers = Vec::new();
        for (from_console, path) in paths {
            let (text, follower) = console::read_end(&path, tail)?;
            head.extend(console::render(source, from_console, &text));
            followers.push((from_console, follower, console::Lines::default()));
        }
        Ok::<_, std::io::Error>((head, followers))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(format!("cannot read the machine's logs: {e}")))?;
    if !query.follow.unwrap_or(false) {
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], head).into_response());
    }
    let machines = state.machines().clone();
    let stop = state.shutting_down();
    let stream = futures::stream::unfold(
        (Some(head), followers, machines, name, Box::pin(stop)),
        move |(first, mut followers, machines, name, mut stop)| async move {
            if let Some(first) = first.filter(|f| !f.is_empty()) {
                return Some((Ok::<_, std::io::Error>(first), (None, followers, machines, name, stop)));
            }
            loop {
                let (read, back) = tokio::task::spawn_blocking(move || {
                    let mut out = Vec::new();
                    for (from_console, follower, lines) in &mut followers {
                        match follower.read_new() {
                            Ok(buf) => out.extend(console::render(source, *from_console, &lines.push(&buf))),
                            Err(error) => return (Err(error), followers),
                        }
                    }
                    (Ok(out), followers)
                })
                .await
                .ok()?;
                followers = back;
                match read {
                    Ok(buf) if !buf.is_empty() => {
                        return Some((Ok(buf), (None, followers, machines, name, stop)));
                    }
                    Ok(_) => {}
                    Err(error) => return Some((Err(error), (None, followers, machines, name, stop))),
                }
                // The stream ends when the machine is removed or the daemon stops.
                if machines.get(&name).await.is_err() {
                    return None;
                }
                tokio::select! {
                    _ = &mut stop => return None,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        },
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], Body::from_stream(stream)).into_response())
}

/// Runs a command in a machine over a WebSocket. The client's first message
/// is an [`ExecStart`] (text); then binary messages are stdin, and text
/// messages are [`ExecControl`]. The daemon sends binary messages whose first
/// byte is 1 (stdout) or 2 (stderr), and ends with an [`ExecEnd`] (text).
#[utoipa::path(get, path = "/v1/machines/{name}/exec", tag = "machines",
    params(("name" = String, Path)),
    responses((status = 101, description = "Switching to the WebSocket exec protocol"),
        (status = 400, description = "Not a WebSocket upgrade", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Not running, or it runs on another host", body = ErrorBody)))]
pub(crate) async fn exec(
    State(state): State<AppState>,
    Extension(caller): Extension<super::auth::Caller>,
    Path(name): Path<String>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::bad_request(
            "not_a_websocket",
            format!("exec is a WebSocket session: {}", rejection.body_text()),
            "connect with a WebSocket client (GET with `Connection: upgrade` and `Upgrade: websocket`); `hearth machine exec` does",
        )
    })?;
    // A session is the machine's activity while it lasts: a machine that
    // sleeps when idle does not fall asleep under a person's shell. Counted
    // before the machine is asked for, so that it cannot doze in between.
    let (open, dozing) = state.networks().activity().open(&name);
    if dozing {
        state.machines().wake_and_wait(&name).await?;
    }
    // Fail before upgrading, so that the client gets a proper HTTP error.
    let agent = state.machines().agent_waking(&name).await?;
    let env_defaults = state.machines().get(&name).await?.spec.env;
    // A dashboard session's terminal ends when the session does.
    let ended: super::exec::Ended = match caller {
        super::auth::Caller::Session { session, .. } => Box::pin(state.sessions().ended(&session)),
        super::auth::Caller::Owner => Box::pin(std::future::pending()),
    };
    Ok(upgrade.on_upgrade(move |socket| async move {
        super::exec::session(socket, agent, env_defaults, name, ended).await;
        drop(open);
    }))
}

/// Pauses a running machine to disk (memory, devices and disk); the machine
/// is stopped afterwards.
#[utoipa::path(post, path = "/v1/machines/{name}/snapshot", tag = "machines",
    params(("name" = String, Path)), request_body = TakeSnapshot,
    responses((status = 201, body = Snapshot), (status = 404, body = ErrorBody),
        (status = 409, description = "Not running, on another host, or the snapshot name is taken", body = ErrorBody)))]
pub(crate) async fn snapshot(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<TakeSnapshot>,
) -> Result<(StatusCode, axum::Json<Snapshot>), ApiError> {
    let snap = state.machines().snapshot(&name, &body.name).await?;
    Ok((StatusCode::CREATED, axum::Json(snapshot_info(snap))))
}

/// Lists snapshots.
#[utoipa::path(get, path = "/v1/snapshots", tag = "machines", responses((status = 200, body = SnapshotList)))]
pub(crate) async fn snapshots(State(state): State<AppState>) -> Result<axum::Json<SnapshotList>, ApiError> {
    let list = state.machines().snapshots().await?;
    Ok(axum::Json(SnapshotList { snapshots: list.into_iter().map(snapshot_info).collect() }))
}

/// Creates a machine from a snapshot and resumes it where it was, on the
/// snapshot's host (whose disk holds it): ask that host's daemon.
#[utoipa::path(post, path = "/v1/snapshots/{name}/restore", tag = "machines",
    params(("name" = String, Path)), request_body = RestoreSnapshot,
    responses((status = 201, body = Machine), (status = 404, body = ErrorBody),
        (status = 409, description = "The machine name is taken, or the snapshot is on another host", body = ErrorBody)))]
pub(crate) async fn restore(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<RestoreSnapshot>,
) -> Result<(StatusCode, axum::Json<Machine>), ApiError> {
    let restored = state.machines().restore(&name, body.name).await?;
    Ok((StatusCode::CREATED, axum::Json(machine(restored))))
}

/// Deletes a snapshot.
#[utoipa::path(delete, path = "/v1/snapshots/{name}", tag = "machines",
    params(("name" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody),
        (status = 409, description = "The snapshot is on another host", body = ErrorBody)))]
pub(crate) async fn remove_snapshot(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.machines().remove_snapshot(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
