//! Values as leaves, and layers merged into one tree.
//!
//! A layer keeps its values as leaves: a table set at `db` with `host` and
//! `port` is the two leaves `db.host` and `db.port`; arrays, strings,
//! numbers and booleans are leaves; an empty table is a leaf of its own.
//! Merging layers is the usual recursive merge of tables, later winning,
//! done on leaves:
//!
//! - a leaf replaces the same key of an earlier layer;
//! - a leaf replaces earlier leaves under it (a value replaces a table);
//! - a leaf replaces an earlier leaf above it (a table replaces a value);
//! - an empty table merges: it shows only where nothing earlier is under it.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::Error;
use crate::key::Key;

/// A leaf of the merged tree, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Leaf {
    /// The value: in clear, or, for a secret not decrypted, [`HIDDEN`].
    pub value: Value,
    pub secret: bool,
    /// The layer it came from (`files`, `global`, `app:shop`, `override`,
    /// or the manifest's label).
    pub layer: String,
    /// Where that layer got it (the file `config import` read), if known.
    pub source: Option<String>,
}

/// What a secret shows as wherever it is not delivered to its consumer.
pub const HIDDEN: &str = "(secret)";

/// The leaves of a value set at `at` (or, with no key, of a table set at
/// the root, which must then be a table).
pub fn flatten(at: Option<&Key>, value: Value) -> Result<Vec<(Key, Value)>, Error> {
    let mut out = Vec::new();
    match (at, value) {
        (None, Value::Object(map)) => {
            for (name, value) in map {
                let key = Key::parse(&name)?;
                walk(key, value, &mut out)?;
            }
        }
        (None, other) => {
            return Err(Error::InvalidValue {
                key: String::new(),
                reason: format!("a file or a whole layer must be a table, not {}", kind(&other)),
            });
        }
        (Some(key), value) => walk(key.clone(), value, &mut out)?,
    }
    Ok(out)
}

fn walk(key: Key, value: Value, out: &mut Vec<(Key, Value)>) -> Result<(), Error> {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (name, value) in map {
                walk(key.child(&name)?, value, out)?;
            }
        }
        Value::Null => {
            return Err(Error::InvalidValue {
                key: key.to_string(),
                reason: "null is not a value; remove the key instead (`hearth config rm`)".into(),
            });
        }
        leaf => out.push((key, leaf)),
    }
    Ok(())
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    }
}

/// Lays `layer` over `merged` (see the module documentation).
pub fn overlay(merged: &mut BTreeMap<Key, Leaf>, layer: impl IntoIterator<Item = (Key, Leaf)>) {
    for (key, leaf) in layer {
        for above in key.ancestors() {
            merged.remove(&above);
        }
        let empty_table = matches!(&leaf.value, Value::Object(m) if m.is_empty());
        let under: Vec<Key> = merged.keys().filter(|k| k.is_within(&key)).cloned().collect();
        if empty_table {
            if under.iter().any(|k| *k != key) {
                continue;
            }
        } else {
            for k in under {
                merged.remove(&k);
            }
        }
        merged.insert(key, leaf);
    }
}

/// The merged leaves as one JSON tree.
pub fn to_tree<'a>(leaves: impl IntoIterator<Item = (&'a Key, &'a Value)>) -> Value {
    let mut root = Map::new();
    for (key, value) in leaves {
        let segments: Vec<&str> = key.segments().collect();
        let (last, path) = segments.split_last().expect("a key has a segment");
        let mut table = &mut root;
        for segment in path {
            let slot = table.entry(segment.to_string()).or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                // Cannot happen with merged leaves: a leaf above another is
                // removed when the lower one is laid.
                *slot = Value::Object(Map::new());
            }
            table = slot.as_object_mut().expect("just made a table");
        }
        table.insert(last.to_string(), value.clone());
    }
    Value::Object(root)
}

/// A leaf as text, the way `wasi:config` and `config.env` give it: a string
/// as itself, anything else as JSON.
pub fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The leaves as `config.env`: one `NAME='value'` line each, the name the
/// key upper-cased with `.` and `-` as `_` (`db.pool-size` is
/// `DB_POOL_SIZE`), the value single-quoted for a shell or systemd's
/// `EnvironmentFile`.
pub fn to_env<'a>(leaves: impl IntoIterator<Item = (&'a Key, &'a Value)>) -> String {
    let mut out = String::new();
    for (key, value) in leaves {
        let name: String = key
            .as_str()
            .chars()
            .map(|c| if c == '.' || c == '-' { '_' } else { c.to_ascii_uppercase() })
            .collect();
        let text = as_text(value).replace('\'', "'\\''");
        out.push_str(&format!("{name}='{text}'\n"));
    }
    out
}

/// A value as a person types it after `hearth config set KEY`: a TOML
/// value (`5`, `true`, `"text"`, `[1, 2]`, `{ host = "db", port = 5432 }`),
/// or, when it is one bare word that is not trying to be TOML (no quote,
/// bracket, brace or leading digit or sign), that word as a string.
pub fn parse_text(key: &str, text: &str) -> Result<Value, Error> {
    let document = format!("v = {text}");
    let bare = !text.is_empty()
        && !text.contains(['\n', '\r'])
        && !text.starts_with(['{', '[', '"', '\'', '+', '-', '.'])
        && !text.starts_with(|c: char| c.is_ascii_digit());
    match toml::from_str::<toml::Table>(&document) {
        Ok(mut table) if table.len() == 1 && table.contains_key("v") => {
            let value = from_toml(table.remove("v").expect("checked"));
            match value {
                Some(value) => Ok(value),
                None if bare => Ok(Value::String(text.to_owned())),
                None => Err(Error::InvalidValue {
                    key: key.to_owned(),
                    reason: "infinity and NaN have no JSON form".into(),
                }),
            }
        }
        _ if bare => Ok(Value::String(text.to_owned())),
        Ok(_) => Err(Error::InvalidValue {
            key: key.to_owned(),
            reason: "that is more than one TOML value: set one value per key".into(),
        }),
        Err(error) => Err(Error::InvalidValue {
            key: key.to_owned(),
            reason: format!(
                "it is not a TOML value ({}); quote text as \"...\" to store it as a string",
                error.message().trim()
            ),
        }),
    }
}

/// A TOML value as JSON: dates become RFC 3339 strings; `None` for a
/// float JSON cannot hold.
pub fn from_toml(value: toml::Value) -> Option<Value> {
    Some(match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => Value::Number(serde_json::Number::from_f64(f)?),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.into_iter().map(from_toml).collect::<Option<_>>()?),
        toml::Value::Table(table) => {
            Value::Object(table.into_iter().map(|(k, v)| Some((k, from_toml(v)?))).collect::<Option<_>>()?)
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key(k: &str) -> Key {
        Key::parse(k).unwrap()
    }

    fn layer(name: &str, value: Value) -> Vec<(Key, Leaf)> {
        flatten(None, value)
            .unwrap()
            .into_iter()
            .map(|(k, value)| (k, Leaf { value, secret: false, layer: name.into(), source: None }))
            .collect()
    }

    fn merged(layers: Vec<(&str, Value)>) -> (Value, BTreeMap<String, String>) {
        let mut out = BTreeMap::new();
        for (name, value) in layers {
            overlay(&mut out, layer(name, value));
        }
        let tree = to_tree(out.iter().map(|(k, l)| (k, &l.value)));
        (tree, out.iter().map(|(k, l)| (k.to_string(), l.layer.clone())).collect())
    }

    #[test]
    fn a_leaf_replaces_the_same_key_of_an_earlier_layer() {
        let (tree, from) = merged(vec![("a", json!({"x": 1, "y": 2})), ("b", json!({"x": 3}))]);
        assert_eq!(tree, json!({"x": 3, "y": 2}));
        assert_eq!(from["x"], "b");
        assert_eq!(from["y"], "a");
    }

    #[test]
    fn tables_merge_recursively() {
        let (tree, _) = merged(vec![
            ("a", json!({"db": {"host": "h", "port": 1}})),
            ("b", json!({"db": {"port": 2, "tls": true}})),
        ]);
        assert_eq!(tree, json!({"db": {"host": "h", "port": 2, "tls": true}}));
    }

    #[test]
    fn a_value_replaces_a_table_and_a_table_replaces_a_value() {
        let (tree, _) = merged(vec![("a", json!({"db": {"host": "h"}})), ("b", json!({"db": "off"}))]);
        assert_eq!(tree, json!({"db": "off"}));
        let (tree, _) = merged(vec![("a", json!({"db": "off"})), ("b", json!({"db": {"host": "h"}}))]);
        assert_eq!(tree, json!({"db": {"host": "h"}}));
    }

    #[test]
    fn an_empty_table_shows_only_where_nothing_earlier_is_under_it() {
        let (tree, _) = merged(vec![("a", json!({"db": {"host": "h"}})), ("b", json!({"db": {}}))]);
        assert_eq!(tree, json!({"db": {"host": "h"}}));
        let (tree, _) = merged(vec![("a", json!({"x": 1})), ("b", json!({"db": {}}))]);
        assert_eq!(tree, json!({"x": 1, "db": {}}));
    }

    #[test]
    fn a_value_replaces_the_whole_table_even_past_keys_that_sort_between() {
        // `db-pool` sorts between `db` and `db.host` (`-` is before `.`).
        let (tree, _) =
            merged(vec![("a", json!({"db-pool": 1, "db": {"host": "h"}})), ("b", json!({"db": "off"}))]);
        assert_eq!(tree, json!({"db-pool": 1, "db": "off"}));
    }

    #[test]
    fn arrays_are_leaves_and_null_is_refused() {
        let leaves = flatten(Some(&key("a")), json!({"list": [1, {"b": 2}]})).unwrap();
        assert_eq!(leaves, vec![(key("a.list"), json!([1, {"b": 2}]))]);
        let error = flatten(Some(&key("a")), json!({"b": null})).unwrap_err().to_string();
        assert!(error.contains("a.b") && error.contains("null"), "{error}");
        let error = flatten(None, json!(5)).unwrap_err().to_string();
        assert!(error.contains("must be a table"), "{error}");
        let error = flatten(None, json!({"bad key": 1})).unwrap_err().to_string();
        assert!(error.contains("bad key"), "{error}");
    }

    #[test]
    fn typed_text_is_a_toml_value_or_one_bare_word() {
        for (text, want) in [
            ("5", json!(5)),
            ("-2.5", json!(-2.5)),
            ("true", json!(true)),
            ("\"a b\"", json!("a b")),
            ("'raw'", json!("raw")),
            ("[1, 2]", json!([1, 2])),
            ("{ host = \"db\", port = 5432 }", json!({"host": "db", "port": 5432})),
            ("hello", json!("hello")),
            ("nan", json!("nan")),
            ("1979-05-27T07:32:00Z", json!("1979-05-27T07:32:00Z")),
        ] {
            assert_eq!(parse_text("k", text).unwrap(), want, "{text}");
        }
        for (text, why) in [
            ("{ host = ", "not a TOML value"),
            ("1.2.3", "not a TOML value"),
            ("\"open", "not a TOML value"),
            ("1\nw = 2", "more than one"),
            ("", "not a TOML value"),
        ] {
            let error = parse_text("k", text).expect_err(text).to_string();
            assert!(error.contains(why) && error.contains("\"k\""), "{text}: {error}");
        }
    }

    #[test]
    fn env_names_are_upper_case_and_values_single_quoted() {
        let leaves =
            [(key("db.pool-size"), json!(5)), (key("greeting"), json!("it's")), (key("l"), json!([1]))];
        let env = to_env(leaves.iter().map(|(k, v)| (k, v)));
        assert_eq!(env, "DB_POOL_SIZE='5'\nGREETING='it'\\''s'\nL='[1]'\n");
    }
}
