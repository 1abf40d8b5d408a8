//! Event patterns, like EventBridge's content filters, over a store event.
//!
//! A pattern names keys (`prefix` or `exact`), optionally the kind of
//! change (`put` or `delete`), and conditions on fields of the value,
//! parsed as JSON when it is JSON, by dotted paths (`status.state`):
//!
//! | written                         | holds when the field                         |
//! |---------------------------------|----------------------------------------------|
//! | `"failed"`, `3`, `true`         | equals it (numbers by value: `3` = `3.0`)    |
//! | `["failed", "lost"]`            | meets any of them (values or conditions)     |
//! | `{ prefix = "web-" }`           | is a string that starts with it              |
//! | `{ anything_but = ["ok"] }`     | is present and equals none of them           |
//! | `{ exists = true }` / `false`   | is present / is absent                       |
//! | `{ ">" = 5, "<=" = 10 }`        | is a number within all the bounds (`>`, `>=`, `<`, `<=`, `=`) |
//!
//! A field that is a list meets a condition when any of its items does
//! (`anything_but`: when none of them is among the values), as in
//! EventBridge. All the conditions of a pattern must hold.
//!
//! **The self-trigger guard.** The daemon keeps alert bookkeeping (state,
//! notifications, the `record` receiver's history) under [`OWN_PREFIX`], and
//! puts a [`MARKER`] field on any other value it writes because of a
//! notification (a workflow's input, say). Such events are *own* events
//! ([`is_own`]): no pattern sees them unless it sets `include_alerts =
//! true`, and the engine never lets the rule a marker names see that
//! event, opted in or not. So a notification's effects cannot fire the
//! rule that sent it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where the daemon keeps alert bookkeeping; keys under it are own events.
pub const OWN_PREFIX: &str = "alerts/";

/// The top-level field of a JSON value the daemon writes because of a
/// notification: `"hearth_alert": { "rule": "NAME", "notification": "ID" }`.
pub const MARKER: &str = "hearth_alert";

/// A put or a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Put,
    Delete,
}

/// A store event as patterns see it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventInput {
    pub kind: EventKind,
    pub key: String,
    /// The value parsed as JSON when it is JSON, else its text as a JSON
    /// string when it is UTF-8; `None` for a delete or binary bytes.
    pub value: Option<Value>,
}

impl EventInput {
    /// A put of `value` at `key`.
    pub fn put(key: &str, value: &[u8]) -> EventInput {
        let value = serde_json::from_slice(value)
            .ok()
            .or_else(|| std::str::from_utf8(value).ok().map(|s| Value::String(s.to_owned())));
        EventInput { kind: EventKind::Put, key: key.to_owned(), value }
    }

    /// A delete of `key`.
    pub fn delete(key: &str) -> EventInput {
        EventInput { kind: EventKind::Delete, key: key.to_owned(), value: None }
    }
}

/// Whether `event` is the daemon's own: alert bookkeeping, or a value
/// marked with [`MARKER`].
pub fn is_own(event: &EventInput) -> bool {
    event.key.starts_with(OWN_PREFIX) || event.value.as_ref().is_some_and(|v| v.get(MARKER).is_some())
}

/// The rule named by `event`'s [`MARKER`], if it has one.
pub fn marked_by(event: &EventInput) -> Option<&str> {
    event.value.as_ref()?.get(MARKER)?.get("rule")?.as_str()
}

/// Which keys a pattern looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMatch {
    Prefix(String),
    Exact(String),
}

/// A parsed pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    pub key: KeyMatch,
    /// `None`: puts and deletes.
    pub kind: Option<EventKind>,
    /// Dotted paths and their conditions, all of which must hold.
    pub fields: Vec<(String, Condition)>,
    /// Whether own events ([`is_own`]) may match.
    pub include_alerts: bool,
}

/// A condition on one field.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Equals(Value),
    AnyOf(Vec<Condition>),
    Prefix(String),
    AnythingBut(Vec<Value>),
    Exists(bool),
    /// All of the bounds hold.
    Numeric(Vec<(Op, f64)>),
}

/// A comparison of two numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Op {
    /// `>`, `>=`, `<`, `<=`, `==` (or `=`), `!=`.
    pub fn parse(s: &str) -> Option<Op> {
        Some(match s.trim() {
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "<" => Op::Lt,
            "<=" => Op::Le,
            "==" | "=" => Op::Eq,
            "!=" => Op::Ne,
            _ => return None,
        })
    }

    /// Whether `left OP right`; never for NaN.
    pub fn holds(self, left: f64, right: f64) -> bool {
        match self {
            Op::Gt => left > right,
            Op::Ge => left >= right,
            Op::Lt => left < right,
            Op::Le => left <= right,
            Op::Eq => left == right,
            Op::Ne => left != right && !left.is_nan() && !right.is_nan(),
        }
    }
}

/// Whether `event` matches `pattern`: its key and kind, every field
/// condition, and the self-trigger guard.
pub fn matches(pattern: &Pattern, event: &EventInput) -> bool {
    in_scope(pattern, event)
        && pattern.kind.is_none_or(|kind| kind == event.kind)
        && pattern.fields.iter().all(|(path, condition)| meets(condition, lookup(event.value.as_ref(), path)))
}

/// Whether `event` is about a key `pattern` looks at, and passes the
/// self-trigger guard: an event in scope that does not match clears what
/// an earlier one for the same key raised.
pub fn in_scope(pattern: &Pattern, event: &EventInput) -> bool {
    let key = match &pattern.key {
        KeyMatch::Prefix(prefix) => event.key.starts_with(prefix.as_str()),
        KeyMatch::Exact(exact) => event.key == *exact,
    };
    key && (pattern.include_alerts || !is_own(event))
}

fn lookup<'a>(value: Option<&'a Value>, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value?, |value, segment| value.as_object()?.get(segment))
}

fn meets(condition: &Condition, found: Option<&Value>) -> bool {
    match (condition, found) {
        (Condition::Exists(want), found) => found.is_some() == *want,
        (Condition::AnyOf(conditions), found) => conditions.iter().any(|c| meets(c, found)),
        (_, None) => false,
        (Condition::AnythingBut(values), Some(Value::Array(items))) => {
            items.iter().all(|item| !values.iter().any(|v| same(item, v)))
        }
        (_, Some(Value::Array(items))) => items.iter().any(|item| meets_one(condition, item)),
        (_, Some(value)) => meets_one(condition, value),
    }
}

fn meets_one(condition: &Condition, value: &Value) -> bool {
    match condition {
        Condition::Equals(want) => same(value, want),
        Condition::Prefix(prefix) => value.as_str().is_some_and(|s| s.starts_with(prefix.as_str())),
        Condition::AnythingBut(values) => !values.iter().any(|v| same(value, v)),
        Condition::Numeric(bounds) => {
            value.as_f64().is_some_and(|n| bounds.iter().all(|(op, bound)| op.holds(n, *bound)))
        }
        Condition::Exists(_) | Condition::AnyOf(_) => meets(condition, Some(value)),
    }
}

/// JSON equality, with numbers compared by value.
fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if a.is_number() && b.is_number() => x == y,
        _ => a == b,
    }
}

/// A rule's `event` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEvent {
    pub(crate) prefix: Option<String>,
    pub(crate) exact: Option<String>,
    pub(crate) kind: Option<EventKind>,
    #[serde(rename = "match", default)]
    pub(crate) fields: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub(crate) include_alerts: bool,
    /// The rule's, not the pattern's: read by `rules`.
    pub(crate) resolve_after: Option<String>,
}

impl Pattern {
    /// Parses a pattern written as a rule's `event` inline table, e.g.
    /// `{ prefix = "machines/", match = { "status.state" = "failed" } }`.
    pub fn parse(text: &str) -> Result<Pattern, crate::rules::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Doc {
            event: RawEvent,
        }
        let doc: Doc = crate::rules::deserialize(&format!("event = {text}"))?;
        let mut problems = Vec::new();
        let pattern = Pattern::from_raw(&doc.event, "event", &mut problems);
        match pattern {
            Some(pattern) if problems.is_empty() => Ok(pattern),
            _ => Err(crate::rules::Error::Invalid(problems)),
        }
    }

    /// The pattern of `raw`, or `None` with what is wrong pushed onto
    /// `problems`, each prefixed with `path`.
    pub(crate) fn from_raw(raw: &RawEvent, path: &str, problems: &mut Vec<String>) -> Option<Pattern> {
        let before = problems.len();
        let key = match (&raw.prefix, &raw.exact) {
            (Some(prefix), None) => Some(KeyMatch::Prefix(prefix.clone())),
            (None, Some(exact)) if !exact.is_empty() => Some(KeyMatch::Exact(exact.clone())),
            (None, Some(_)) => {
                problems.push(format!(
                    "{path}.exact: an empty key names nothing; use `prefix = \"\"` for every key"
                ));
                None
            }
            (None, None) => {
                problems
                    .push(format!("{path}: give `prefix` or `exact` (`prefix = \"\"` looks at every key)"));
                None
            }
            (Some(_), Some(_)) => {
                problems.push(format!("{path}: give `prefix` or `exact`, not both"));
                None
            }
        };
        if let Some(KeyMatch::Prefix(k) | KeyMatch::Exact(k)) = &key
            && k.starts_with(OWN_PREFIX)
            && !raw.include_alerts
        {
            problems.push(format!(
                "{path}: keys under `{OWN_PREFIX}` are alert bookkeeping, which event rules do not see; \
                 set `include_alerts = true` to see them"
            ));
        }
        let mut fields = Vec::new();
        for (name, written) in &raw.fields {
            let field_path = format!("{path}.match.\"{name}\"");
            if name.is_empty() || name.split('.').any(str::is_empty) {
                problems
                    .push(format!("{field_path}: a field path is names joined by dots, like `status.state`"));
                continue;
            }
            match condition(written, true) {
                Ok(c) => fields.push((name.clone(), c)),
                Err(e) => problems.push(format!("{field_path}: {e}")),
            }
        }
        let key = key?;
        (problems.len() == before).then_some(Pattern {
            key,
            kind: raw.kind,
            fields,
            include_alerts: raw.include_alerts,
        })
    }
}

const CONDITIONS: &str = "use a value, a list, { prefix = \"..\" }, { anything_but = [..] }, \
                          { exists = true } or bounds like { \">\" = 5, \"<=\" = 10 }";

/// The condition `written` stands for; `lists` is false inside a list.
fn condition(written: &toml::Value, lists: bool) -> Result<Condition, String> {
    use toml::Value as T;
    match written {
        T::Array(items) if lists => {
            if items.is_empty() {
                return Err("an empty list matches nothing".into());
            }
            items.iter().map(|item| condition(item, false)).collect::<Result<_, _>>().map(Condition::AnyOf)
        }
        T::Array(_) => Err("a list inside a list is not a condition".into()),
        T::Table(table) => {
            let keys: Vec<&str> = table.keys().map(String::as_str).collect();
            match keys.as_slice() {
                ["prefix"] => match &table["prefix"] {
                    T::String(prefix) => Ok(Condition::Prefix(prefix.clone())),
                    _ => Err("`prefix` takes a string".into()),
                },
                ["exists"] => match &table["exists"] {
                    T::Boolean(b) => Ok(Condition::Exists(*b)),
                    _ => Err("`exists` takes true or false".into()),
                },
                ["anything_but"] => {
                    let values = match &table["anything_but"] {
                        T::Array(items) => items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?,
                        one => vec![scalar(one)?],
                    };
                    Ok(Condition::AnythingBut(values))
                }
                _ if !keys.is_empty() && keys.iter().all(|k| Op::parse(k).is_some_and(|op| op != Op::Ne)) => {
                    let mut bounds = Vec::new();
                    for (k, v) in table {
                        let bound = match v {
                            T::Integer(i) => *i as f64,
                            T::Float(f) if f.is_finite() => *f,
                            _ => return Err(format!("the bound `{k}` takes a number")),
                        };
                        bounds.extend(Op::parse(k).map(|op| (op, bound)));
                    }
                    Ok(Condition::Numeric(bounds))
                }
                _ => Err(format!("{{ {} }} is not a condition: {CONDITIONS}", keys.join(", "))),
            }
        }
        other => scalar(other).map(Condition::Equals),
    }
}

fn scalar(written: &toml::Value) -> Result<Value, String> {
    use toml::Value as T;
    Ok(match written {
        T::String(s) => Value::String(s.clone()),
        T::Integer(i) => Value::from(*i),
        T::Float(f) => {
            serde_json::Number::from_f64(*f).map(Value::Number).ok_or("a number must be finite")?
        }
        T::Boolean(b) => Value::Bool(*b),
        T::Datetime(_) => return Err("a date is not a JSON value; write it as a string".into()),
        T::Array(_) | T::Table(_) => return Err(format!("expected a value: {CONDITIONS}")),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn put(key: &str, value: Value) -> EventInput {
        EventInput::put(key, value.to_string().as_bytes())
    }

    /// Each case: a pattern, an event, and whether it matches.
    fn check(cases: &[(&str, EventInput, bool)]) {
        for (pattern, event, want) in cases {
            let parsed = Pattern::parse(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
            assert_eq!(matches(&parsed, event), *want, "{pattern} against {event:?}");
        }
    }

    #[test]
    fn keys_match_by_prefix_or_exactly() {
        let e = || put("machines/web", json!({}));
        check(&[
            (r#"{ prefix = "machines/" }"#, e(), true),
            (r#"{ prefix = "machines/w" }"#, e(), true),
            (r#"{ prefix = "networks/" }"#, e(), false),
            (r#"{ prefix = "" }"#, e(), true),
            (r#"{ exact = "machines/web" }"#, e(), true),
            (r#"{ exact = "machines/we" }"#, e(), false),
        ]);
    }

    #[test]
    fn kinds_match_puts_deletes_or_both() {
        check(&[
            (r#"{ prefix = "m/", kind = "put" }"#, put("m/a", json!(1)), true),
            (r#"{ prefix = "m/", kind = "put" }"#, EventInput::delete("m/a"), false),
            (r#"{ prefix = "m/", kind = "delete" }"#, EventInput::delete("m/a"), true),
            (r#"{ prefix = "m/" }"#, EventInput::delete("m/a"), true),
        ]);
    }

    #[test]
    fn fields_match_exact_values() {
        let e = || put("m/a", json!({ "status": { "state": "failed", "code": 3, "up": false } }));
        check(&[
            (r#"{ prefix = "m/", match = { "status.state" = "failed" } }"#, e(), true),
            (r#"{ prefix = "m/", match = { "status.state" = "running" } }"#, e(), false),
            (r#"{ prefix = "m/", match = { "status.code" = 3 } }"#, e(), true),
            (r#"{ prefix = "m/", match = { "status.code" = 3.0 } }"#, e(), true),
            (r#"{ prefix = "m/", match = { "status.code" = "3" } }"#, e(), false),
            (r#"{ prefix = "m/", match = { "status.up" = false } }"#, e(), true),
            (r#"{ prefix = "m/", match = { "status.missing" = "x" } }"#, e(), false),
            (r#"{ prefix = "m/", match = { "status" = "failed" } }"#, e(), false),
            // Every condition must hold.
            (r#"{ prefix = "m/", match = { "status.state" = "failed", "status.code" = 4 } }"#, e(), false),
        ]);
    }

    #[test]
    fn a_list_of_values_matches_any_of_them() {
        let e = |state: &str| put("m/a", json!({ "state": state }));
        let p = r#"{ prefix = "m/", match = { state = ["failed", "lost", { prefix = "err" }] } }"#;
        check(&[
            (p, e("failed"), true),
            (p, e("lost"), true),
            (p, e("error"), true),
            (p, e("running"), false),
        ]);
    }

    #[test]
    fn prefix_anything_but_and_exists_match_as_in_eventbridge() {
        let e = || put("m/a", json!({ "name": "web-1", "state": "ok", "tags": ["a", "b"], "n": null }));
        check(&[
            (r#"{ prefix = "m/", match = { name = { prefix = "web-" } } }"#, e(), true),
            (r#"{ prefix = "m/", match = { name = { prefix = "db-" } } }"#, e(), false),
            (r#"{ prefix = "m/", match = { state = { prefix = "o" }, n = { prefix = "" } } }"#, e(), false),
            (r#"{ prefix = "m/", match = { state = { anything_but = ["ok", "idle"] } } }"#, e(), false),
            (r#"{ prefix = "m/", match = { state = { anything_but = "failed" } } }"#, e(), true),
            // anything_but needs the field to be there.
            (r#"{ prefix = "m/", match = { gone = { anything_but = "x" } } }"#, e(), false),
            (r#"{ prefix = "m/", match = { state = { exists = true } } }"#, e(), true),
            (r#"{ prefix = "m/", match = { gone = { exists = true } } }"#, e(), false),
            (r#"{ prefix = "m/", match = { gone = { exists = false } } }"#, e(), true),
            (r#"{ prefix = "m/", match = { state = { exists = false } } }"#, e(), false),
            // A list field meets a condition when an item does.
            (r#"{ prefix = "m/", match = { tags = "b" } }"#, e(), true),
            (r#"{ prefix = "m/", match = { tags = { anything_but = ["b"] } } }"#, e(), false),
            (r#"{ prefix = "m/", match = { tags = { anything_but = ["c"] } } }"#, e(), true),
        ]);
    }

    #[test]
    fn numeric_bounds_all_hold() {
        let e = |n: Value| put("m/a", json!({ "load": n }));
        let p = r#"{ prefix = "m/", match = { load = { ">" = 5, "<=" = 10 } } }"#;
        check(&[
            (p, e(json!(5)), false),
            (p, e(json!(5.5)), true),
            (p, e(json!(10)), true),
            (p, e(json!(10.01)), false),
            (p, e(json!("7")), false),
            (r#"{ prefix = "m/", match = { load = { "=" = 7 } } }"#, e(json!(7.0)), true),
            (r#"{ prefix = "m/", match = { load = { ">=" = -1.5 } } }"#, e(json!(-1.5)), true),
            (r#"{ prefix = "m/", match = { load = { "<" = 0 } } }"#, e(json!(0)), false),
        ]);
    }

    #[test]
    fn values_that_are_not_json_are_text() {
        let text = EventInput::put("m/a", b"plain text");
        assert_eq!(text.value, Some(json!("plain text")));
        let binary = EventInput::put("m/a", &[0xff, 0xfe]);
        assert_eq!(binary.value, None);
        check(&[
            (r#"{ prefix = "m/" }"#, text.clone(), true),
            (r#"{ prefix = "m/", match = { state = { exists = false } } }"#, text, true),
            (r#"{ prefix = "m/", match = { state = "x" } }"#, binary, false),
        ]);
    }

    #[test]
    fn own_events_reach_no_pattern_unless_it_opts_in() {
        let bookkeeping = put("alerts/state", json!({ "x": 1 }));
        let marked = put("workflows/runs/1", json!({ MARKER: { "rule": "r", "notification": "n" } }));
        check(&[
            (r#"{ prefix = "" }"#, bookkeeping.clone(), false),
            (r#"{ prefix = "", include_alerts = true }"#, bookkeeping.clone(), true),
            (r#"{ prefix = "alerts/", include_alerts = true }"#, bookkeeping, true),
            (r#"{ prefix = "workflows/" }"#, marked.clone(), false),
            (r#"{ prefix = "workflows/", include_alerts = true }"#, marked.clone(), true),
        ]);
        assert_eq!(marked_by(&marked), Some("r"));
        assert_eq!(marked_by(&put("workflows/runs/2", json!({ "rule": "r" }))), None);
    }

    #[test]
    fn bad_patterns_are_refused_with_their_field() {
        let cases = [
            (r#"{ }"#, "event: give `prefix` or `exact`"),
            (r#"{ prefix = "a", exact = "b" }"#, "not both"),
            (r#"{ exact = "" }"#, "event.exact:"),
            (r#"{ prefix = "alerts/" }"#, "set `include_alerts = true`"),
            (r#"{ prefix = "", match = { "a..b" = 1 } }"#, "event.match.\"a..b\": a field path"),
            (r#"{ prefix = "", match = { a = [] } }"#, "an empty list"),
            (r#"{ prefix = "", match = { a = [[1]] } }"#, "a list inside a list"),
            (r#"{ prefix = "", match = { a = { suffix = "x" } } }"#, "{ suffix } is not a condition"),
            (r#"{ prefix = "", match = { a = { ">" = "x" } } }"#, "the bound `>` takes a number"),
            (r#"{ prefix = "", match = { a = { exists = "yes" } } }"#, "true or false"),
            (r#"{ prefix = "", match = { a = 1979-05-27 } }"#, "a date"),
            (r#"{ prefix = "", kind = "update" }"#, "event.kind"),
            (r#"{ prefix = "", extra = 1 }"#, "unknown field `extra`"),
        ];
        for (pattern, want) in cases {
            let err = Pattern::parse(pattern).unwrap_err().to_string();
            assert!(err.contains(want), "{pattern}: {err}");
        }
    }
}
