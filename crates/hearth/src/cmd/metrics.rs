//! `hearth metrics`: hearth's own time series, listed or charted in the
//! terminal.

use hearth_client::Client;
use hearth_client::types::{MetricQuery, MetricQueryResult, MetricSeries};

use crate::output::Table;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// List the metrics there are, with how many series (label sets) each has.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Chart a metric's series in the terminal, one chart per series.
    Query {
        /// The metric, e.g. app_request_rate (`hearth metrics ls` lists them).
        name: String,
        /// From: a duration back from now (1h, 30m), or Unix milliseconds.
        #[arg(long, default_value = "1h")]
        since: String,
        /// To: a duration back from now, or Unix milliseconds [default: now].
        #[arg(long)]
        until: Option<String>,
        /// Only the series with this label, e.g. --match app=shop; repeat for more.
        #[arg(long = "match", value_name = "LABEL=VALUE")]
        matchers: Vec<String>,
        /// One point per step (1m, 30s), the mean of its samples [default: every sample].
        #[arg(long)]
        step: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Ls { json } => {
            let list = client.metrics().await?;
            if json {
                return crate::output::print_json(&list);
            }
            if list.metrics.is_empty() {
                println!(
                    "nothing has been sampled yet; metrics are sampled every {}",
                    human_ms(list.interval_ms)
                );
                return Ok(());
            }
            let mut table = Table::new(vec!["NAME", "SERIES"]);
            for metric in &list.metrics {
                table.row(vec![metric.name.clone(), metric.series.to_string()]);
            }
            print!("{}", table.render());
        }
        Command::Query { name, since, until, matchers, step, json } => {
            let query = MetricQuery { name, since: Some(since), until, step, matchers };
            let result = client.query_metric(&query).await?;
            if json {
                return crate::output::print_json(&result);
            }
            let width = terminal_size::terminal_size().map_or(80, |(w, _)| usize::from(w.0)).max(30);
            print!("{}", render(&result, &query.matchers, width));
        }
    }
    Ok(())
}

/// Rows of a chart; each row is 8 levels high.
const ROWS: usize = 4;
/// Room on the left for the axis values.
const GUTTER: usize = 9;
const LEVELS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// Every series of a result as a chart `width` columns wide.
fn render(result: &MetricQueryResult, matchers: &[String], width: usize) -> String {
    if result.series.is_empty() {
        return format!("no series of {} carries {}\n", result.name, matchers.join(" and "));
    }
    let mut out = String::new();
    for series in &result.series {
        out.push_str(&chart(&result.name, series, result.interval_ms, width));
        out.push('\n');
    }
    out
}

/// One series: a title, a block chart scaled to its minimum and maximum,
/// and the time axis.
fn chart(name: &str, series: &MetricSeries, interval_ms: u64, width: usize) -> String {
    let labels: Vec<String> = series.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut out = format!("{} {}", name, labels.join(" ")).trim_end().to_owned();
    out.push('\n');
    let (Some(first), Some(last)) = (series.points.first(), series.points.last()) else {
        out.push_str("  no samples in this span\n");
        return out;
    };
    let columns = width.saturating_sub(GUTTER + 2).max(10);
    let cells = resample(series, columns, interval_ms);
    let (lo, hi) = series
        .points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.value), hi.max(p.value)));
    let range = if hi > lo { hi - lo } else { 1.0 };
    let eighths: Vec<Option<usize>> = cells
        .iter()
        .map(|c| c.map(|v| ((((v - lo) / range) * (ROWS * 8) as f64).round() as usize).clamp(1, ROWS * 8)))
        .collect();
    for row in 0..ROWS {
        let axis = match row {
            0 => format!("{:>w$} ┤", short(hi), w = GUTTER - 2),
            r if r == ROWS - 1 => format!("{:>w$} ┤", short(lo), w = GUTTER - 2),
            _ => format!("{:>w$} │", "", w = GUTTER - 2),
        };
        out.push_str(&axis);
        let floor = (ROWS - 1 - row) * 8;
        let line: String =
            eighths.iter().map(|e| e.map_or(' ', |e| LEVELS[e.saturating_sub(floor).min(8)])).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(&format!("{:>w$} └{}\n", "", "─".repeat(cells.len()), w = GUTTER - 2));
    let (from, to) = (clock(first.at), clock(last.at));
    let span = format!("{} UTC", human_ms(last.at - first.at));
    let gap = cells.len().saturating_sub(from.len() + to.len() + span.len()) / 2;
    out.push_str(&format!(
        "{:w$}{from}{:gap$}{span}{:gap2$}{to}\n",
        "",
        "",
        "",
        w = GUTTER,
        gap2 = cells.len().saturating_sub(from.len() + to.len() + span.len() + gap).max(1),
        gap = gap.max(1),
    ));
    out.push_str(&format!(
        "{:w$}min {}  max {}  last {}  ({} samples)\n",
        "",
        short(lo),
        short(hi),
        short(last.value),
        series.points.len(),
        w = GUTTER
    ));
    out
}

/// The series' points spread over `columns` from its first point to its
/// last: each column the mean of its points, or the value before it while
/// that is at most two intervals old (a gap longer than that stays blank).
fn resample(series: &MetricSeries, columns: usize, interval_ms: u64) -> Vec<Option<f64>> {
    let (Some(first), Some(last)) = (series.points.first(), series.points.last()) else { return Vec::new() };
    let span = (last.at - first.at).max(1) as f64;
    let mut sums = vec![(0.0, 0u32); columns];
    for point in &series.points {
        let column = ((((point.at - first.at) as f64) / span) * (columns - 1) as f64).round() as usize;
        let (sum, n) = &mut sums[column.min(columns - 1)];
        *sum += point.value;
        *n += 1;
    }
    let column_ms = span / (columns - 1).max(1) as f64;
    let mut held: Option<(f64, f64)> = None;
    sums.into_iter()
        .enumerate()
        .map(|(i, (sum, n))| {
            let at = i as f64 * column_ms;
            if n > 0 {
                let mean = sum / f64::from(n);
                held = Some((mean, at));
                return Some(mean);
            }
            held.filter(|(_, since)| at - since <= 2.0 * interval_ms as f64).map(|(v, _)| v)
        })
        .collect()
}

/// A value short enough for the axis: 3 significant digits, with k, M, G.
fn short(value: f64) -> String {
    let magnitude = value.abs();
    let (scaled, suffix) = match magnitude {
        m if m >= 1e9 => (value / 1e9, "G"),
        m if m >= 1e6 => (value / 1e6, "M"),
        m if m >= 1e4 => (value / 1e3, "k"),
        _ => (value, ""),
    };
    let text = if scaled.fract() == 0.0 || scaled.abs() >= 100.0 {
        format!("{scaled:.0}")
    } else if scaled.abs() >= 10.0 {
        format!("{scaled:.1}")
    } else {
        format!("{scaled:.2}")
    };
    format!("{text}{suffix}")
}

/// A time of day, UTC, to the second.
fn clock(unix_ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    let text = humantime::format_rfc3339_seconds(time).to_string();
    text.get(11..19).unwrap_or(&text).to_owned()
}

fn human_ms(ms: u64) -> String {
    humantime::format_duration(
        std::time::Duration::from_secs(ms / 1000).max(std::time::Duration::from_secs(1)),
    )
    .to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use hearth_client::types::MetricPoint;

    use super::*;

    fn series(values: &[f64]) -> MetricSeries {
        MetricSeries {
            labels: BTreeMap::from([("app".to_owned(), "shop".to_owned())]),
            points: values
                .iter()
                .enumerate()
                .map(|(i, v)| MetricPoint { at: 1_700_000_000_000 + i as u64 * 10_000, value: *v })
                .collect(),
        }
    }

    #[test]
    fn a_chart_fits_the_width_and_labels_its_axes() {
        let values: Vec<f64> = (0..360).map(|i| f64::from(i % 60)).collect();
        let text = chart("app_request_rate", &series(&values), 10_000, 60);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "app_request_rate app=shop");
        assert!(lines.iter().all(|l| l.chars().count() <= 60), "{text}");
        assert!(lines[1].trim_start().starts_with("59 ┤"), "the maximum on top: {text}");
        assert!(lines[4].trim_start().starts_with("0 ┤"), "the minimum below: {text}");
        assert!(text.contains("22:13:20") && text.contains("59m 50s UTC"), "the span: {text}");
        assert!(text.contains("min 0  max 59  last 59  (360 samples)"), "{text}");
        assert!(text.contains('█') && text.contains('▁'), "{text}");
    }

    #[test]
    fn a_flat_series_is_drawn_and_an_empty_one_said() {
        let text = chart("store_revision", &series(&[7.0, 7.0, 7.0]), 10_000, 40);
        assert!(text.contains('▁'), "{text}");
        let empty = chart("store_revision", &series(&[]), 10_000, 40);
        assert!(empty.contains("no samples in this span"), "{empty}");
    }

    #[test]
    fn a_gap_longer_than_two_intervals_stays_blank() {
        let mut s = series(&[1.0, 2.0]);
        s.points[1].at = s.points[0].at + 100_000;
        let cells = resample(&s, 11, 10_000);
        assert_eq!(cells[0], Some(1.0));
        assert_eq!(cells[1], Some(1.0), "held for two intervals");
        assert_eq!(cells[5], None);
        assert_eq!(cells[10], Some(2.0));
    }

    #[test]
    fn values_are_shortened_for_the_axis() {
        assert_eq!(short(0.0), "0");
        assert_eq!(short(0.126), "0.13");
        assert_eq!(short(42.26), "42.3");
        assert_eq!(short(123_456_789.0), "123M");
        assert_eq!(short(2_147_483_648.0), "2.15G");
    }
}
