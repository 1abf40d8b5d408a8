//! Labs: machines and networks declared together in a file.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::MachineState;

wire_enum! {
    /// A lab's machine's state, or `missing` if it was removed behind the
    /// lab's back.
    LabMachineState {
        Created = "created",
        Starting = "starting",
        Running = "running",
        Stopping = "stopping",
        Stopped = "stopped",
        Failed = "failed",
        /// Its host stopped answering.
        Lost = "lost",
        /// Saved to disk until something wakes it.
        Sleeping = "sleeping",
        /// The lab owns it, but it is gone.
        Missing = "missing",
    }
}

impl From<MachineState> for LabMachineState {
    fn from(state: MachineState) -> Self {
        match state {
            MachineState::Created => LabMachineState::Created,
            MachineState::Starting => LabMachineState::Starting,
            MachineState::Running => LabMachineState::Running,
            MachineState::Stopping => LabMachineState::Stopping,
            MachineState::Stopped => LabMachineState::Stopped,
            MachineState::Failed => LabMachineState::Failed,
            MachineState::Lost => LabMachineState::Lost,
            MachineState::Sleeping => LabMachineState::Sleeping,
        }
    }
}

/// `PUT /v1/labs/{name}`: records a lab, or replaces its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutLab {
    /// The lab's name; the same as in the path.
    pub name: String,
    /// The lab file it came from, as the CLI's user named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The lab file's text (TOML).
    pub source: String,
    /// The machines the lab owns: `down` removes them.
    #[serde(default)]
    pub machines: Vec<String>,
    /// The networks the lab created: `down` removes them. Networks it only
    /// joins (made by someone else) are not listed.
    #[serde(default)]
    pub networks: Vec<String>,
    /// The services the lab owns: `down` removes them and their machines.
    #[serde(default)]
    pub services: Vec<String>,
}

/// A lab, with the state of its machines now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Lab {
    pub name: String,
    pub file: Option<String>,
    /// The lab file's text, as last brought up.
    pub source: String,
    pub machines: Vec<LabMachine>,
    /// The networks the lab created.
    pub networks: Vec<String>,
    /// The services the lab owns.
    #[serde(default)]
    pub services: Vec<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds of the last `lab up`.
    pub updated_at: u64,
}

/// One of a lab's machines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LabMachine {
    pub name: String,
    pub state: LabMachineState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LabList {
    pub labs: Vec<Lab>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteLabQuery {
    /// Also remove the lab's machines (killed if running) and the networks
    /// it created; without it only the record goes.
    pub down: Option<bool>,
}

/// What `DELETE /v1/labs/{name}` removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LabDown {
    pub name: String,
    pub removed_machines: Vec<String>,
    pub removed_networks: Vec<String>,
    #[serde(default)]
    pub removed_services: Vec<String>,
    /// What was left alone, and why.
    pub notes: Vec<String>,
}
