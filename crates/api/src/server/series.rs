//! `/v1/metrics`: hearth's own time series (see `hearth_metrics`), read by
//! `hearth metrics` and a dashboard. (`/metrics`, the daemon's Prometheus
//! counters, is `crate::metrics`.)

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use hearth_client::types::{
    ErrorBody, MetricList, MetricName, MetricPoint, MetricQuery, MetricQueryResult, MetricSeries,
};

use super::AppState;
use crate::error::ApiError;
use crate::extract::ApiQuery;

/// How far back a query looks unless told.
const DEFAULT_SINCE: Duration = Duration::from_secs(3600);
/// The most `match` parameters a query takes.
const MAX_MATCHERS: usize = 16;

impl From<hearth_metrics::Error> for ApiError {
    fn from(error: hearth_metrics::Error) -> Self {
        match error {
            hearth_metrics::Error::UnknownName { name, known } => ApiError::not_found(
                format!("there is no metric named {name:?}"),
                if known.is_empty() {
                    "nothing has been sampled yet; metrics appear after the first interval".to_owned()
                } else {
                    format!("the metrics there are: {}", known.join(", "))
                },
            ),
            hearth_metrics::Error::Query(message) => ApiError::bad_request(
                "invalid_query",
                message,
                "see /v1/openapi.json for since, until and step",
            ),
            other => {
                tracing::error!(error = %other, "The time series failed.");
                ApiError::internal(format!("the time series failed: {other}"))
            }
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The metric names there are, with how many series each has.
#[utoipa::path(get, path = "/v1/metrics", tag = "metrics",
    responses((status = 200, body = MetricList)))]
pub(crate) async fn list(State(state): State<AppState>) -> axum::Json<MetricList> {
    let series = state.series();
    let options = series.options();
    axum::Json(MetricList {
        interval_ms: millis(options.interval),
        retention_ms: millis(options.retention),
        metrics: series.names().into_iter().map(|n| MetricName { name: n.name, series: n.series }).collect(),
    })
}

/// A metric's series over a span, raw or one point per step (the mean of
/// the step's samples), filtered by labels.
#[utoipa::path(get, path = "/v1/metrics/query", tag = "metrics", params(MetricQuery),
    responses((status = 200, body = MetricQueryResult), (status = 400, body = ErrorBody),
        (status = 404, description = "No metric has this name; the hint lists those there are", body = ErrorBody)))]
pub(crate) async fn query(
    State(state): State<AppState>,
    ApiQuery(pairs): ApiQuery<Vec<(String, String)>>,
) -> Result<axum::Json<MetricQueryResult>, ApiError> {
    let asked = parse(&pairs)?;
    let now = hearth_metrics::now_ms();
    let since_ms = match asked.since.as_deref() {
        Some(text) => time(text, now, "since")?,
        None => now.saturating_sub(millis(DEFAULT_SINCE)),
    };
    let until_ms = match asked.until.as_deref() {
        Some(text) => time(text, now, "until")?,
        None => now,
    };
    let step_ms = asked.step.as_deref().map(step).transpose()?;
    let mut matchers = BTreeMap::new();
    for matcher in &asked.matchers {
        let Some((label, value)) = matcher.split_once('=') else {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("the matcher {matcher:?} is not LABEL=VALUE"),
                "write each `match` as LABEL=VALUE, e.g. match=app=shop",
            ));
        };
        matchers.insert(label.to_owned(), value.to_owned());
    }
    let query = hearth_metrics::Query { name: asked.name.clone(), matchers, since_ms, until_ms, step_ms };
    let series = state.series().clone();
    let found = tokio::task::spawn_blocking(move || series.query(&query))
        .await
        .map_err(|e| ApiError::internal(format!("the query's task failed: {e}")))??;
    Ok(axum::Json(MetricQueryResult {
        name: asked.name,
        since_ms,
        until_ms,
        step_ms,
        interval_ms: millis(state.series().options().interval),
        series: found
            .into_iter()
            .map(|s| MetricSeries {
                labels: s.labels,
                points: s.points.into_iter().map(|(at, value)| MetricPoint { at, value }).collect(),
            })
            .collect(),
    }))
}

/// The query string, with `match` repeatable and every other parameter at
/// most once: the query extractor cannot read repeated keys into a struct.
fn parse(pairs: &[(String, String)]) -> Result<MetricQuery, ApiError> {
    let mut query = MetricQuery::default();
    let mut name = None;
    for (key, value) in pairs {
        let slot = match key.as_str() {
            "name" => &mut name,
            "since" => &mut query.since,
            "until" => &mut query.until,
            "step" => &mut query.step,
            "match" => {
                query.matchers.push(value.clone());
                continue;
            }
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("unknown query parameter {other:?}"),
                    "the parameters are name, since, until, step and match (repeatable)",
                ));
            }
        };
        if slot.replace(value.clone()).is_some() {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("the parameter {key:?} is given twice"),
                "give it once; only `match` repeats",
            ));
        }
    }
    query.name = name.filter(|n| !n.is_empty()).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_query",
            "the parameter `name` is missing",
            "name the metric, e.g. name=app_request_rate; GET /v1/metrics lists them",
        )
    })?;
    if query.matchers.len() > MAX_MATCHERS {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("{} matchers, over the limit of {MAX_MATCHERS}", query.matchers.len()),
            "match fewer labels",
        ));
    }
    Ok(query)
}

/// `since` or `until`: Unix ms, or a duration back from `now`.
fn time(text: &str, now: u64, what: &str) -> Result<u64, ApiError> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| invalid_time(text, what));
    }
    let back = humantime::parse_duration(text).map_err(|_| invalid_time(text, what))?;
    Ok(now.saturating_sub(millis(back)))
}

fn invalid_time(text: &str, what: &str) -> ApiError {
    ApiError::bad_request(
        "invalid_query",
        format!("{what} {text:?} is neither a duration nor Unix milliseconds"),
        format!("write {what} as a duration back from now, such as 1h or 30m, or as Unix milliseconds"),
    )
}

/// `step`: a duration, or milliseconds.
fn step(text: &str) -> Result<u64, ApiError> {
    let ms = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().ok()
    } else {
        humantime::parse_duration(text).ok().map(millis)
    };
    ms.filter(|ms| *ms > 0).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_query",
            format!("step {text:?} is not a duration over zero"),
            "write the step as a duration such as 1m or 30s, or as milliseconds",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn match_repeats_and_nothing_else_does() {
        let query =
            parse(&pairs(&[("name", "app_request_rate"), ("match", "app=shop"), ("match", "route=/")]))
                .expect("a query");
        assert_eq!(query.matchers, vec!["app=shop", "route=/"]);
        let twice = parse(&pairs(&[("name", "a"), ("since", "1h"), ("since", "2h")])).expect_err("twice");
        assert!(twice.detail.message.contains("twice"), "{twice:?}");
        let unknown = parse(&pairs(&[("name", "a"), ("labels", "x")])).expect_err("unknown");
        assert!(unknown.detail.message.contains("labels"), "{unknown:?}");
        assert!(parse(&pairs(&[("since", "1h")])).is_err(), "no name");
    }

    #[test]
    fn times_are_unix_ms_or_durations_back_from_now() {
        assert_eq!(time("1700000000000", 5, "since").expect("ms"), 1_700_000_000_000);
        assert_eq!(time("1h", 10_000_000, "since").expect("a duration"), 10_000_000 - 3_600_000);
        assert!(time("yesterday", 0, "since").is_err());
        assert_eq!(step("1m").expect("a step"), 60_000);
        assert_eq!(step("500").expect("ms"), 500);
        assert!(step("0s").is_err());
    }
}
