//! Private networks and the faults injected into them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

wire_enum! {
    /// What a fault does.
    FaultKind {
        Partition = "partition",
        Delay = "delay",
        Loss = "loss",
    }
}

/// A private network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Network {
    pub name: String,
    pub subnet: String,
    pub gateway: String,
    /// The host bridge.
    pub bridge: String,
    pub nat: bool,
    /// Machines on it, with their addresses.
    pub machines: Vec<NetworkMember>,
    pub created_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkMember {
    pub machine: String,
    pub ip: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkList {
    pub networks: Vec<Network>,
}

/// `POST /v1/networks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNetwork {
    pub name: String,
    /// e.g. `10.250.0.0/24`; default: the next free /24 from 10.200.0.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Reach the outside through NAT (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<bool>,
}

/// A fault, as injected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Fault {
    pub id: String,
    pub kind: FaultKind,
    /// A readable summary, e.g. `delay n1 100ms ±10ms`.
    pub description: String,
    /// What it targets, as `POST /v1/faults` took it: the one of
    /// `partition`, `delay` and `loss` that `kind` names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<PartitionFault>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelayFault>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<LossFault>,
    /// Unix seconds at which it heals itself, if it does.
    pub expires_at: Option<u64>,
    pub created_at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FaultList {
    pub faults: Vec<Fault>,
}

/// `POST /v1/faults`: exactly one of `partition`, `delay`, `loss`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<PartitionFault>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelayFault>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<LossFault>,
    /// Heal automatically after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_secs: Option<u64>,
}

/// Traffic from `from` to `machines` is dropped; with `both_ways`, back too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartitionFault {
    pub machines: Vec<String>,
    pub from: Vec<String>,
    #[serde(default = "yes")]
    pub both_ways: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DelayFault {
    pub machine: String,
    pub delay_ms: u64,
    #[serde(default)]
    pub jitter_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LossFault {
    pub machine: String,
    pub percent: f32,
}

/// How many faults were healed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Healed {
    pub healed: usize,
}
