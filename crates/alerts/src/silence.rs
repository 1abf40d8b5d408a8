//! Silences: label matchers that mute alerts for a while.
//!
//! A silence mutes the alerts whose labels meet all its matchers while it
//! is active, from `starts_at` (inclusive) to `ends_at` (exclusive). A
//! matcher is Alertmanager's: `name=value`, `name!=value`, `name=~regex`,
//! `name!~regex`, the regex anchored at both ends (`=~web` does not match
//! `webserver`), and a missing label read as the empty string. Expiring a
//! silence sets its end to now, so it stops muting at once.

use std::fmt;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::Labels;

/// A silence was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

/// How a matcher compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchOp {
    #[serde(rename = "=")]
    Equal,
    #[serde(rename = "!=")]
    NotEqual,
    #[serde(rename = "=~")]
    Regex,
    #[serde(rename = "!~")]
    NotRegex,
}

impl MatchOp {
    fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

/// One condition on one label.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "MatcherSpec", into = "MatcherSpec")]
pub struct Matcher {
    name: String,
    op: MatchOp,
    value: String,
    /// `^(?:value)$` for the regex ops.
    regex: Option<Regex>,
}

/// A matcher as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatcherSpec {
    name: String,
    op: MatchOp,
    value: String,
}

impl TryFrom<MatcherSpec> for Matcher {
    type Error = Error;
    fn try_from(spec: MatcherSpec) -> Result<Matcher, Error> {
        Matcher::new(&spec.name, spec.op, &spec.value)
    }
}

impl From<Matcher> for MatcherSpec {
    fn from(m: Matcher) -> MatcherSpec {
        MatcherSpec { name: m.name, op: m.op, value: m.value }
    }
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Matcher) -> bool {
        (&self.name, self.op, &self.value) == (&other.name, other.op, &other.value)
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.name, self.op.as_str(), self.value)
    }
}

impl Matcher {
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Matcher, Error> {
        if let Err(e) = crate::rules::check_label_name(name) {
            return Err(Error(format!("matcher `{name}{}{value}`: {e}", op.as_str())));
        }
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(
                regex::RegexBuilder::new(&format!("^(?:{value})$"))
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| Error(format!("matcher `{name}{}{value}`: {e}", op.as_str())))?,
            ),
            MatchOp::Equal | MatchOp::NotEqual => None,
        };
        Ok(Matcher { name: name.to_owned(), op, value: value.to_owned(), regex })
    }

    /// `name=value`, `name!=value`, `name=~regex` or `name!~regex`.
    pub fn parse(written: &str) -> Result<Matcher, Error> {
        let at = written.find(['=', '!', '~']).ok_or_else(|| {
            Error(format!("`{written}` is not a matcher like severity=critical, app!=shop or host=~web-.*"))
        })?;
        let (name, rest) = written.split_at(at);
        let (op, value) = [
            ("=~", MatchOp::Regex),
            ("!~", MatchOp::NotRegex),
            ("!=", MatchOp::NotEqual),
            ("=", MatchOp::Equal),
        ]
        .into_iter()
        .find_map(|(text, op)| rest.strip_prefix(text).map(|value| (op, value)))
        .ok_or_else(|| Error(format!("`{written}`: the operator is one of =, !=, =~, !~")))?;
        Matcher::new(name.trim(), op, value.trim())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `labels` meet the matcher; a missing label is "".
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.name).map_or("", String::as_str);
        match (self.op, &self.regex) {
            (MatchOp::Equal, _) => value == self.value,
            (MatchOp::NotEqual, _) => value != self.value,
            (MatchOp::Regex, Some(re)) => re.is_match(value),
            (MatchOp::NotRegex, Some(re)) => !re.is_match(value),
            (MatchOp::Regex | MatchOp::NotRegex, None) => false,
        }
    }
}

/// A silence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<Matcher>,
    /// Milliseconds since the Unix epoch, inclusive.
    pub starts_at: u64,
    /// Milliseconds since the Unix epoch, exclusive.
    pub ends_at: u64,
    pub created_by: String,
    #[serde(default)]
    pub comment: String,
}

impl Silence {
    /// Whether the silence mutes anything at `now`.
    pub fn active(&self, now: u64) -> bool {
        self.starts_at <= now && now < self.ends_at
    }

    /// Whether it mutes an alert with `labels` at `now`.
    pub fn mutes(&self, labels: &Labels, now: u64) -> bool {
        self.active(now) && self.matchers.iter().all(|m| m.matches(labels))
    }

    /// The checks a silence passes before it is kept.
    pub fn validate(&self) -> Result<(), Error> {
        if self.id.is_empty() || self.id.len() > 128 || self.id.chars().any(|c| c.is_control() || c == '/') {
            return Err(Error("a silence id is 1 to 128 characters, without `/`".into()));
        }
        // As in Alertmanager: a silence that would also mute alerts
        // without the labels it names is almost surely a mistake.
        if !self.matchers.iter().any(|m| !m.matches(&Labels::new())) {
            return Err(Error(
                "a silence needs a matcher that an alert without labels does not meet, such as rule=NAME"
                    .into(),
            ));
        }
        if self.ends_at <= self.starts_at {
            return Err(Error("a silence ends after it starts".into()));
        }
        if self.created_by.trim().is_empty() {
            return Err(Error("a silence says who created it (created_by)".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn matchers_compare_as_in_alertmanager() {
        let l = labels(&[("host", "web-1"), ("severity", "critical")]);
        let cases = [
            ("severity=critical", true),
            ("severity=crit", false),
            ("severity!=warning", true),
            ("host=~web-.*", true),
            // Anchored at both ends.
            ("host=~web", false),
            ("host=~eb-1", false),
            ("host!~db-.*", true),
            ("host=~web-1|db-1", true),
            // A missing label is the empty string.
            ("app=", true),
            ("app!=", false),
            ("app=~.*", true),
            ("app!~.+", true),
        ];
        for (written, want) in cases {
            let m = Matcher::parse(written).unwrap();
            assert_eq!(m.matches(&l), want, "{written}");
            assert_eq!(m.to_string(), written);
        }
        for bad in ["severity", "=x", "host=~(", "9x=a", "host~x"] {
            assert!(Matcher::parse(bad).is_err(), "{bad}");
        }
    }

    fn silence(matchers: &[&str], starts_at: u64, ends_at: u64) -> Silence {
        Silence {
            id: "s1".into(),
            matchers: matchers.iter().map(|m| Matcher::parse(m).unwrap()).collect(),
            starts_at,
            ends_at,
            created_by: "ops".into(),
            comment: "maintenance".into(),
        }
    }

    #[test]
    fn a_silence_mutes_only_while_active_and_only_what_all_its_matchers_meet() {
        let s = silence(&["rule=disk", "host=~web-.*"], 100, 200);
        let web = labels(&[("rule", "disk"), ("host", "web-1")]);
        let db = labels(&[("rule", "disk"), ("host", "db-1")]);
        assert!(!s.mutes(&web, 99));
        assert!(s.mutes(&web, 100));
        assert!(s.mutes(&web, 199));
        assert!(!s.mutes(&web, 200));
        assert!(!s.mutes(&db, 150));
    }

    #[test]
    fn silences_that_would_mute_too_much_or_nothing_are_refused() {
        assert!(silence(&["rule=disk"], 1, 2).validate().is_ok());
        let cases = [
            (silence(&[], 1, 2), "a matcher"),
            (silence(&["app=~.*"], 1, 2), "a matcher"),
            (silence(&["app!=x"], 1, 2), "a matcher"),
            (silence(&["rule=disk"], 2, 2), "ends after it starts"),
            (Silence { created_by: " ".into(), ..silence(&["rule=disk"], 1, 2) }, "created_by"),
            (Silence { id: "a/b".into(), ..silence(&["rule=disk"], 1, 2) }, "id"),
        ];
        for (s, want) in cases {
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{s:?}: {err}");
        }
    }

    #[test]
    fn silences_are_stored_as_json_and_read_back() {
        let s = silence(&["rule=disk", "host=~web-.*"], 100, 200);
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#"{"name":"host","op":"=~","value":"web-.*"}"#), "{json}");
        let back: Silence = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert!(back.mutes(&labels(&[("rule", "disk"), ("host", "web-2")]), 150));
        let bad = json.replace("web-.*", "(");
        assert!(serde_json::from_str::<Silence>(&bad).is_err());
    }
}
