//! `/v1/metrics`: hearth's own time series (request rates, health, CPU,
//! ...), sampled every interval and kept for a day.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `GET /v1/metrics`: the metric names there are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MetricList {
    /// How often samples are taken, in ms.
    pub interval_ms: u64,
    /// How long they are kept, in ms.
    pub retention_ms: u64,
    /// By name.
    pub metrics: Vec<MetricName>,
}

/// A metric and how many series (label sets) it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MetricName {
    pub name: String,
    pub series: usize,
}

/// `GET /v1/metrics/query`'s parameters. `match` may be given many times.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MetricQuery {
    /// The metric, e.g. `app_request_rate`.
    pub name: String,
    /// From: a duration back from now (`1h`, `30m`; the default is `1h`), or Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// To: a duration back from now, or Unix milliseconds; now by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// One point per step (`1m`, or milliseconds), the mean of the step's samples; raw samples without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// `LABEL=VALUE` a series must carry, e.g. `app=shop`; repeat for more.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    #[param(rename = "match")]
    pub matchers: Vec<String>,
}

/// What a query found: the series of the name that carry every matcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricQueryResult {
    pub name: String,
    /// The span asked for, in Unix ms.
    pub since_ms: u64,
    pub until_ms: u64,
    /// The step, when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_ms: Option<u64>,
    /// How often samples are taken, in ms.
    pub interval_ms: u64,
    /// By labels.
    pub series: Vec<MetricSeries>,
}

/// One series: its labels and its points, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricSeries {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<MetricPoint>,
}

/// A value at a time (with a step: the mean of the step starting then).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricPoint {
    /// Unix ms.
    pub at: u64,
    pub value: f64,
}
