//! `/v1/labs`: the record of what `hearth lab up` brought up.
//!
//! A lab is brought up by the CLI through the ordinary image, network and
//! machine endpoints; the daemon records which machines and networks belong
//! to it (`labs/NAME`, JSON), so that `hearth lab ls` can show it and
//! `hearth lab down` removes exactly those. The handlers live here; the wire
//! types and the client's methods are in `hearth-client`.

use std::collections::{BTreeSet, HashMap};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use hearth_client::types::{
    DeleteLabQuery, ErrorBody, Lab, LabDown, LabList, LabMachine, LabMachineState, MachineState, PutLab,
};

use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};
use crate::server::AppState;
use serde::{Deserialize, Serialize};

/// Where lab records live in the store.
pub const PREFIX: &str = "labs/";

/// The longest lab file the daemon keeps.
pub const MAX_SOURCE_LEN: usize = 256 * 1024;

/// The most machines one lab may own.
pub const MAX_MACHINES: usize = 256;

/// The stored record, `labs/NAME`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LabRecord {
    name: String,
    file: Option<String>,
    source: String,
    machines: Vec<String>,
    networks: Vec<String>,
    #[serde(default)]
    services: Vec<String>,
    created_at: u64,
    updated_at: u64,
}

fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn decode(kv: &hearth_store::KeyValue) -> Result<LabRecord, ApiError> {
    serde_json::from_slice(&kv.value).map_err(|e| {
        tracing::error!(key = kv.key, error = %e, "Lab record is unreadable.");
        ApiError::internal(format!("the record {} is unreadable: {e}", kv.key))
    })
}

async fn read(state: &AppState, name: &str) -> Result<Option<(LabRecord, u64)>, ApiError> {
    match state.store().get(&key(name)).await? {
        Some(kv) => Ok(Some((decode(&kv)?, kv.mod_revision))),
        None => Ok(None),
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(
        format!("lab {name:?} does not exist"),
        "`hearth lab ls` lists labs; `hearth lab up FILE` brings one up",
    )
}

/// Machine states by name, for describing labs.
async fn machine_states(state: &AppState) -> Result<HashMap<String, MachineState>, ApiError> {
    let machines = state.machines().list().await?;
    Ok(machines
        .into_iter()
        .map(|m| (m.name, crate::server::machines::machine_state(m.status.state)))
        .collect())
}

fn describe(r: LabRecord, states: &HashMap<String, MachineState>) -> Lab {
    Lab {
        machines: r
            .machines
            .iter()
            .map(|m| LabMachine {
                name: m.clone(),
                state: states.get(m).map_or(LabMachineState::Missing, |s| LabMachineState::from(*s)),
            })
            .collect(),
        name: r.name,
        file: r.file,
        source: r.source,
        networks: r.networks,
        services: r.services,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

/// Lab names follow machine names: 1 to 63 lowercase letters, digits and
/// dashes.
pub fn validate_name(name: &str) -> Result<(), String> {
    hearth_store::names::check_label("lab", name, 63)
}

fn invalid(message: String, hint: &str) -> ApiError {
    ApiError::bad_request("invalid_field", message, hint)
}

fn validate(path_name: &str, body: &PutLab) -> Result<(), ApiError> {
    validate_name(path_name).map_err(|e| invalid(e, "e.g. etcd or raft-lab"))?;
    if body.name != path_name {
        return Err(invalid(
            format!("field `name`: {:?} is not the lab in the path, {path_name:?}", body.name),
            "send the same name in the path and the body",
        ));
    }
    if body.source.len() > MAX_SOURCE_LEN {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "field `source`: the lab file is {} bytes; the limit is {MAX_SOURCE_LEN}",
                body.source.len()
            ),
            "a lab file describes machines; keep scripts in files the setup copies or fetches",
        ));
    }
    if body.machines.len() > MAX_MACHINES {
        return Err(invalid(
            format!("field `machines`: {} machines; a lab owns at most {MAX_MACHINES}", body.machines.len()),
            "split it into several labs",
        ));
    }
    let mut seen = BTreeSet::new();
    for m in &body.machines {
        hearth_machines::record::validate_name(m).map_err(|e| {
            invalid(format!("field `machines`: {e}"), "name machines as `hearth machine run` does")
        })?;
        if !seen.insert(m) {
            return Err(invalid(
                format!("field `machines`: {m:?} is listed twice"),
                "list each machine once",
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for n in &body.networks {
        hearth_net::record::validate_name(n).map_err(|e| {
            invalid(format!("field `networks`: {e}"), "name networks as `hearth network create` does")
        })?;
        if !seen.insert(n) {
            return Err(invalid(
                format!("field `networks`: {n:?} is listed twice"),
                "list each network once",
            ));
        }
    }
    let mut seen = BTreeSet::new();
    if body.services.len() > MAX_MACHINES {
        return Err(invalid(
            format!("field `services`: {} services; a lab owns at most {MAX_MACHINES}", body.services.len()),
            "split the lab",
        ));
    }
    for s in &body.services {
        hearth_services::record::validate_name(s).map_err(|e| {
            invalid(format!("field `services`: {e}"), "name services as `hearth service create` does")
        })?;
        if !seen.insert(s) {
            return Err(invalid(
                format!("field `services`: {s:?} is listed twice"),
                "list each service once",
            ));
        }
    }
    Ok(())
}

/// Lists labs, with the state of their machines.
#[utoipa::path(get, path = "/v1/labs", tag = "labs", responses((status = 200, body = LabList)))]
pub(crate) async fn list(State(state): State<AppState>) -> Result<axum::Json<LabList>, ApiError> {
    let range = state.store().range(PREFIX).await?;
    let states = machine_states(&state).await?;
    let labs =
        range.kvs.iter().map(|kv| decode(kv).map(|r| describe(r, &states))).collect::<Result<_, _>>()?;
    Ok(axum::Json(LabList { labs }))
}

/// Shows one lab.
#[utoipa::path(get, path = "/v1/labs/{name}", tag = "labs",
    params(("name" = String, Path)), responses((status = 200, body = Lab), (status = 404, body = ErrorBody)))]
pub(crate) async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<Lab>, ApiError> {
    let (record, _) = read(&state, &name).await?.ok_or_else(|| not_found(&name))?;
    Ok(axum::Json(describe(record, &machine_states(&state).await?)))
}

/// Records a lab: its file and the machines and networks it owns. The CLI
/// records a lab before it creates anything, so that a lab that failed
/// half-way up can still be taken down.
#[utoipa::path(put, path = "/v1/labs/{name}", tag = "labs", request_body = PutLab,
    params(("name" = String, Path)),
    responses((status = 200, description = "Replaced", body = Lab), (status = 201, description = "Created", body = Lab),
        (status = 400, body = ErrorBody), (status = 409, description = "Changed at the same time", body = ErrorBody)))]
pub(crate) async fn put(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<PutLab>,
) -> Result<(StatusCode, axum::Json<Lab>), ApiError> {
    validate(&name, &body)?;
    let previous = read(&state, &name).await?;
    let now = now_unix();
    let record = LabRecord {
        name: name.clone(),
        file: body.file,
        source: body.source,
        machines: body.machines,
        networks: body.networks,
        services: body.services,
        created_at: previous.as_ref().map_or(now, |(r, _)| r.created_at),
        updated_at: now,
    };
    let value = serde_json::to_vec(&record).map_err(|e| ApiError::internal(e.to_string()))?;
    let key = key(&name);
    let revision = previous.as_ref().map_or(0, |(_, rev)| *rev);
    let txn = hearth_store::Txn::new()
        .when(hearth_store::Compare::mod_revision(&key, revision))
        .and_then(hearth_store::Op::Put { key: key.clone(), value, lease: None });
    if !state.store().txn(txn).await?.succeeded {
        return Err(ApiError::conflict(
            format!("lab {name:?} changed while it was being recorded"),
            "another `hearth lab up` or `lab down` ran at the same time; try again",
        ));
    }
    let status = if previous.is_some() { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, axum::Json(describe(record, &machine_states(&state).await?))))
}

/// Forgets a lab; with `down=true` first removes its machines (killed if
/// running) and the networks it created. A network that machines outside
/// the lab still use is kept, and the answer says so.
#[utoipa::path(delete, path = "/v1/labs/{name}", tag = "labs",
    params(("name" = String, Path), DeleteLabQuery),
    responses((status = 200, body = LabDown), (status = 404, body = ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<DeleteLabQuery>,
) -> Result<axum::Json<LabDown>, ApiError> {
    let (record, _) = read(&state, &name).await?.ok_or_else(|| not_found(&name))?;
    let mut down = LabDown {
        name: name.clone(),
        removed_machines: vec![],
        removed_networks: vec![],
        removed_services: vec![],
        notes: vec![],
    };
    if query.down.unwrap_or(false) {
        // Services first: they would replace the machines they keep.
        for service in &record.services {
            match state.services().remove(service).await {
                Ok(()) => down.removed_services.push(service.clone()),
                Err(hearth_services::Error::NotFound(_)) => {
                    down.notes.push(format!("service {service} was already gone"));
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Machines first: a network cannot go while machines are on it. An
        // error stops here with the record kept, so `down` can run again.
        for machine in &record.machines {
            match state.machines().remove(machine, true).await {
                Ok(()) => down.removed_machines.push(machine.clone()),
                Err(hearth_machines::Error::NotFound(_)) => {
                    down.notes.push(format!("machine {machine} was already gone"));
                }
                Err(e) => return Err(e.into()),
            }
        }
        for network in &record.networks {
            match state.networks().remove(network).await {
                Ok(()) => down.removed_networks.push(network.clone()),
                Err(hearth_net::service::Error::NotFound(_)) => {
                    down.notes.push(format!("network {network} was already gone"));
                }
                Err(hearth_net::service::Error::InUse { machines, .. }) => {
                    down.notes.push(format!(
                        "network {network} is kept: machines outside the lab use it ({machines})"
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !down.removed_networks.is_empty() {
            // Take the bridges down before answering: the network service
            // would soon, but until then their routes make a new network
            // with the same subnet (`lab up` right after `lab down`) look
            // like it overlaps the host's routes.
            state.networks().apply().await;
        }
    } else {
        down.notes.push("only the record was removed; the machines and networks are still there".to_owned());
    }
    state.store().delete(&key(&name)).await?;
    tracing::info!(lab = name, machines = down.removed_machines.len(), "Lab removed.");
    Ok(axum::Json(down))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(name: &str) -> PutLab {
        PutLab {
            name: name.into(),
            file: None,
            source: String::new(),
            machines: vec!["a-1".into(), "a-2".into()],
            networks: vec!["lab".into()],
            services: vec![],
        }
    }

    fn check(path: &str, body: PutLab, expect: &str) {
        let error = validate(path, &body).expect_err(expect);
        assert!(error.detail.message.contains(expect), "{:?} lacks {expect:?}", error.detail.message);
    }

    #[test]
    fn bad_lab_records_are_refused_with_the_field() {
        assert!(validate("lab", &body("lab")).is_ok());
        check("Lab", body("Lab"), "lab name \"Lab\" is not valid");
        check("lab", body("other"), "field `name`");
        let mut twice = body("lab");
        twice.machines.push("a-1".into());
        check("lab", twice, "field `machines`: \"a-1\" is listed twice");
        let mut bad = body("lab");
        bad.networks.push("Bad_Net".into());
        check("lab", bad, "field `networks`");
        let mut big = body("lab");
        big.source = "x".repeat(MAX_SOURCE_LEN + 1);
        check("lab", big, "field `source`");
    }

    #[test]
    fn put_bodies_are_strict() {
        let error = crate::extract::parse_json::<PutLab>(br#"{"name": "a", "source": "", "machnes": []}"#)
            .expect_err("unknown field");
        assert_eq!(error.code(), "unknown_field");
    }
}
