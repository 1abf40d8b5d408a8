//! Log rules: matching lines counted per source in a sliding window.
//!
//! A rule's condition holds while at least `count` matching lines of one
//! source fell in the last `window`. A window keeps only the times of the
//! latest matching lines, as many as the threshold needs (`> 5` keeps 6),
//! so its memory is bounded whatever the rate of lines.

use regex::Regex;
use serde::{Deserialize, Serialize};

/// The source of the daemon's own log lines about alerts (deliveries,
/// failures). Only a rule that names it exactly reads it, so that a failing
/// delivery cannot feed the rule that caused it through a `*` source.
pub const OWN_SOURCE: &str = "hearth:alerts";

/// A log rule's input.
#[derive(Debug, Clone)]
pub struct LogRule {
    pub source: Source,
    pub regex: Regex,
    /// The condition holds with at least this many matching lines in the
    /// window (`count = "> 5"` is 6); at least 1.
    pub at_least: u32,
    /// Milliseconds.
    pub window: u64,
}

/// Which sources a log rule reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `app:shop`
    Exact(String),
    /// `app:*`, and `*` for every source but [`OWN_SOURCE`].
    Prefix(String),
}

impl Source {
    /// `NAME`, or a prefix followed by `*`.
    pub fn parse(written: &str) -> Source {
        match written.strip_suffix('*') {
            Some(prefix) => Source::Prefix(prefix.to_owned()),
            None => Source::Exact(written.to_owned()),
        }
    }

    pub fn matches(&self, source: &str) -> bool {
        match self {
            Source::Exact(exact) => source == exact,
            Source::Prefix(prefix) => source.starts_with(prefix.as_str()) && source != OWN_SOURCE,
        }
    }
}

impl LogRule {
    /// Whether `line` from `source` is one this rule counts.
    pub fn counts(&self, source: &str, line: &str) -> bool {
        self.source.matches(source) && self.regex.is_match(line)
    }
}

/// `"> 5"` or `">= 6"`, as the least number of lines that meets it.
pub fn parse_count(written: &str) -> Result<u32, String> {
    let written = written.trim();
    let (at_least, n) = if let Some(n) = written.strip_prefix(">=") {
        (true, n)
    } else if let Some(n) = written.strip_prefix('>') {
        (false, n)
    } else {
        return Err(format!(
            "`{written}` is not a count like \"> 5\" or \">= 6\" (a window counts lines up to a threshold)"
        ));
    };
    let n: u32 = n.trim().parse().map_err(|_| format!("`{}` is not a whole number", n.trim()))?;
    let need = if at_least { n } else { n.checked_add(1).ok_or("the count is too large")? };
    match need {
        0 => Err(format!("`{written}` always holds")),
        // Each counted line keeps a timestamp: keep that bounded.
        n if n > 100_000 => Err(format!("`{written}`: count at most 100000 lines")),
        n => Ok(n),
    }
}

/// The times of the latest matching lines of one source, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogWindow {
    times: Vec<u64>,
}

impl LogWindow {
    /// Counts `line`, seen at `at`, if `rule`'s pattern matches it (the
    /// caller has checked the source). Whether it was counted.
    pub fn observe(&mut self, rule: &LogRule, line: &str, at: u64) -> bool {
        let matched = rule.regex.is_match(line);
        if matched {
            self.record(at, rule.at_least);
        }
        matched
    }

    /// Counts a matching line seen at `at`, keeping only the latest `keep`.
    pub(crate) fn record(&mut self, at: u64, keep: u32) {
        // Lines may come a little out of order; keep the times sorted.
        let i = self.times.partition_point(|t| *t <= at);
        self.times.insert(i, at);
        let excess = self.times.len().saturating_sub(keep.max(1) as usize);
        self.times.drain(..excess);
    }

    /// Whether the rule's condition holds at `now`.
    pub fn condition(&self, rule: &LogRule, now: u64) -> bool {
        self.held_until(rule).is_some_and(|until| now < until)
    }

    /// Until when the condition holds with the lines seen so far: the
    /// oldest of the latest `at_least` lines leaves the window then.
    /// `None` if there were never enough lines.
    pub fn held_until(&self, rule: &LogRule) -> Option<u64> {
        let need = rule.at_least.max(1) as usize;
        let i = self.times.len().checked_sub(need)?;
        Some(self.times[i].saturating_add(rule.window))
    }

    /// Whether every line seen has left the window by `now`.
    pub fn idle(&self, rule: &LogRule, now: u64) -> bool {
        self.times.last().is_none_or(|t| t.saturating_add(rule.window) <= now)
    }

    /// How many line times are kept.
    pub fn len(&self) -> usize {
        self.times.len()
    }

    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    fn rule(count: &str, window: u64) -> LogRule {
        LogRule {
            source: Source::parse("app:shop"),
            regex: Regex::new("panicked|ERROR").unwrap(),
            at_least: parse_count(count).unwrap(),
            window,
        }
    }

    #[test]
    fn the_condition_holds_while_enough_matching_lines_are_in_the_window() {
        let rule = rule("> 2", 60 * S);
        let mut w = LogWindow::default();
        // (time, line, condition just after)
        let steps: &[(u64, &str, bool)] = &[
            (0, "ERROR one", false),
            (10 * S, "fine", false),
            (20 * S, "thread panicked", false),
            (30 * S, "ERROR three", true),
            (59 * S, "ok", true),
            // The line at 0 leaves the window at 60 s.
            (60 * S, "ok", false),
            (61 * S, "ERROR again", true),
        ];
        for &(at, line, want) in steps {
            w.observe(&rule, line, at);
            assert_eq!(w.condition(&rule, at), want, "at {at}: {line}");
        }
        assert_eq!(w.held_until(&rule), Some(80 * S));
    }

    #[test]
    fn a_window_keeps_no_more_times_than_the_threshold_needs() {
        let rule = rule("> 5", 60 * S);
        let mut w = LogWindow::default();
        for i in 0..10_000 {
            w.observe(&rule, "ERROR", i);
        }
        assert_eq!(w.len(), 6);
        assert!(w.condition(&rule, 10_000));
        let rule = rule_at_least(1);
        let mut w = LogWindow::default();
        w.observe(&rule, "ERROR", 5);
        w.observe(&rule, "ERROR", 7);
        assert_eq!(w.len(), 1);
        assert_eq!(w.held_until(&rule), Some(7 + 60 * S));
    }

    fn rule_at_least(n: u32) -> LogRule {
        LogRule { at_least: n, ..rule("> 0", 60 * S) }
    }

    #[test]
    fn lines_out_of_order_are_counted_in_order() {
        let rule = rule(">= 2", 10 * S);
        let mut w = LogWindow::default();
        w.observe(&rule, "ERROR", 9 * S);
        w.observe(&rule, "ERROR", S);
        w.observe(&rule, "ERROR", 5 * S);
        // The latest two are 5 s and 9 s.
        assert_eq!(w.held_until(&rule), Some(15 * S));
        assert!(!w.idle(&rule, 18 * S));
        assert!(w.idle(&rule, 19 * S));
    }

    #[test]
    fn counts_are_written_as_thresholds() {
        let cases = [("> 5", Ok(6)), (">= 5", Ok(5)), ("> 0", Ok(1)), (" >=1 ", Ok(1))];
        for (written, want) in cases {
            assert_eq!(parse_count(written), want, "{written}");
        }
        for bad in ["5", "< 5", ">= 0", "> x", "> -1", "> 4294967295", "> 200000"] {
            assert!(parse_count(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_star_source_never_reads_the_daemons_own_lines() {
        assert!(Source::parse("*").matches("app:shop"));
        assert!(!Source::parse("*").matches(OWN_SOURCE));
        assert!(!Source::parse("hearth:*").matches(OWN_SOURCE));
        assert!(Source::parse(OWN_SOURCE).matches(OWN_SOURCE));
        assert!(Source::parse("app:*").matches("app:shop"));
        assert!(!Source::parse("app:shop").matches("app:shopping"));
    }
}
