//! What must never be handed on: store keys that hold secrets, the secrets
//! written in a manifest, the secrets inside any record, and the keys of
//! hearth's own plumbing.
//!
//! An event trigger passes each change's value to an app or a workflow, the
//! events API shows every change to its client, and a manifest is shown
//! back to whoever reads the app or workflow. Webhook secrets and app
//! secrets live in a few places in the store; changes there reach no event
//! trigger, whatever its prefix; [`redact`] is what any reader of a stored
//! value is shown; and a manifest is shown with its secrets masked.
//!
//! A new kind of secret is covered without being listed here if it follows
//! the conventions [`redact`] states: a namespace with a `secrets` segment,
//! or a field named `secret` (or `…_secret`, `password`, `…_password`).
//!
//! Some keys are not secret but are nobody's news: the component bytes
//! shared between hosts ([`INTERNAL_PREFIXES`]), a megabyte a chunk at
//! every deploy. A change there reaches no reader of changes at all: not
//! an event trigger, not the events API (its list and its stream, so not
//! the dashboard), not an alert rule. Each of them asks [`is_internal`].

use std::borrow::Cow;
use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// Store prefixes whose values hold secrets: app secrets, the manifests
/// (which may carry webhook secrets) and the triggers added by API.
pub const SECRET_PREFIXES: &[&str] =
    &["apps/secrets/", "apps/records/", "apps/triggers/", "workflows/defs/", "workflows/triggers/"];

/// Whether `key` holds secrets: a change to it reaches no event trigger.
pub fn is_secret_key(key: &str) -> bool {
    SECRET_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Whether an event trigger on `prefix` would only ever match keys that
/// hold secrets (which it never sees): the prefix is inside one of
/// [`SECRET_PREFIXES`], or reaches into its last segment (`apps/secr`).
pub fn only_secrets(prefix: &str) -> bool {
    only_under(prefix, SECRET_PREFIXES)
}

/// Store prefixes of hearth's own plumbing: the bytes of components shared
/// between hosts (`hearth-wasm`'s `blobs`: each component's manifest and
/// its chunks, `apps/blobs/SHA256[/CHUNK]`, `workflows/blobs/…`).
pub const INTERNAL_PREFIXES: &[&str] = &["apps/blobs/", "workflows/blobs/"];

/// Whether `key` is hearth's own plumbing ([`INTERNAL_PREFIXES`]): a
/// change to it is shown to no one, by the events API, to event triggers
/// or to alert rules, whatever prefix they asked for.
pub fn is_internal(key: &str) -> bool {
    INTERNAL_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Whether an event trigger on `prefix` would only ever match keys of
/// hearth's own plumbing (which it never sees), as [`only_secrets`] tells
/// for secrets.
pub fn only_internal(prefix: &str) -> bool {
    only_under(prefix, INTERNAL_PREFIXES)
}

/// Whether every key that starts with `prefix` is under one of
/// `prefixes`: `prefix` is inside one, or reaches into its last segment.
fn only_under(prefix: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| {
        let last_segment = p[..p.len() - 1].rfind('/').map_or(0, |i| i + 1);
        prefix.starts_with(p) || (p.starts_with(prefix) && prefix.len() > last_segment)
    })
}

/// What a secret is shown as.
pub const MASK: &str = "(hidden)";

/// Whether a field of that name holds a secret, in a record (JSON) or a
/// manifest (TOML): `secret`, `password`, or a name ending in `_secret` or
/// `_password`. A field that holds secret *names* (`secrets = ["TOKEN"]`)
/// is not one.
pub fn is_secret_field(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "secret" || name == "password" || name.ends_with("_secret") || name.ends_with("_password")
}

/// Whether a field of that name holds a manifest's text, which may hold
/// secrets of its own.
fn is_manifest_field(name: &str) -> bool {
    name == "manifest" || name == "manifest_text"
}

/// `manifest` with the value of every secret field ([`is_secret_field`]:
/// a `[[webhook]]`'s `secret`, at any depth) replaced by [`MASK`],
/// everything else (comments, layout) as written. A manifest that does not
/// parse is shown as nothing but a note, since where its secrets are
/// cannot be told.
pub fn redact_secrets(manifest: &str) -> String {
    let table = match DeTable::parse(manifest) {
        Ok(t) => t,
        Err(_) => {
            return "# (this manifest does not parse, so it is not shown: it may hold secrets)\n".into();
        }
    };
    let mut spans: Vec<Range<usize>> = Vec::new();
    secret_spans(table.get_ref(), &mut spans);
    if spans.is_empty() {
        return manifest.to_owned();
    }
    spans.sort_by_key(|s| s.start);
    let mut out = String::with_capacity(manifest.len());
    let mut at = 0;
    for span in spans {
        if span.start < at || span.end > manifest.len() {
            continue;
        }
        out.push_str(&manifest[at..span.start]);
        out.push_str(&format!("{MASK:?}"));
        at = span.end;
    }
    out.push_str(&manifest[at..]);
    out
}

/// The spans of the values of every secret field in `table`, at any depth.
fn secret_spans(table: &DeTable<'_>, spans: &mut Vec<Range<usize>>) {
    fn walk(value: &DeValue<'_>, spans: &mut Vec<Range<usize>>) {
        match value {
            DeValue::Table(t) => secret_spans(t, spans),
            DeValue::Array(items) => items.iter().for_each(|v| walk(v.get_ref(), spans)),
            _ => {}
        }
    }
    for (key, value) in table.iter() {
        if is_secret_field(key.get_ref()) {
            spans.push(value.span());
        } else {
            walk(value.get_ref(), spans);
        }
    }
}

/// A stored value as anyone outside the store is shown it (the events API,
/// as a list and as a stream). The policy, in order:
///
/// 1. A value in the user's key space (`kv/`) is shown as written: it is
///    the user's own data, which `/v1/kv` shows the same client.
/// 2. A value under a key with a `secrets` segment (`apps/secrets/web/TOKEN`)
///    is shown as [`MASK`] whole.
/// 3. A JSON value has every secret field ([`is_secret_field`]) masked, at
///    any depth, and every manifest's text (a string field named
///    `manifest` or `manifest_text`) shown as [`redact_secrets`] shows it.
/// 4. A value under a key known to hold secrets ([`SECRET_PREFIXES`]) that
///    is not JSON is shown as [`MASK`] whole, since where its secrets are
///    cannot be told.
/// 5. Any other value is shown as written.
///
/// A value with nothing to hide is returned as is, byte for byte.
pub fn redact<'v>(key: &str, value: &'v [u8]) -> Cow<'v, [u8]> {
    if key.starts_with("kv/") {
        return Cow::Borrowed(value);
    }
    let mut segments = key.split('/');
    // The last segment is the value's own name, not a namespace.
    segments.next_back();
    if segments.any(|s| s == "secrets") {
        return Cow::Owned(MASK.as_bytes().to_vec());
    }
    match redact_json(value) {
        Some(Ok(shown)) => shown,
        // Not JSON.
        _ if is_secret_key(key) => Cow::Owned(MASK.as_bytes().to_vec()),
        _ => Cow::Borrowed(value),
    }
}

/// `value` with its secrets masked if it is JSON (`Some(Ok)`), `Some(Err)`
/// if it looks like JSON but does not parse, `None` if it is not JSON.
fn redact_json(value: &[u8]) -> Option<Result<Cow<'_, [u8]>, ()>> {
    let first = value.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' && *first != b'[' {
        return None;
    }
    // Most records hold nothing to hide: skip parsing those. An escape
    // could spell a field name, so a value with one is always parsed.
    let mentions = |word: &[u8]| value.windows(word.len()).any(|w| w.eq_ignore_ascii_case(word));
    if !["secret", "password", "manifest", "\\u"].iter().any(|w| mentions(w.as_bytes())) {
        return Some(Ok(Cow::Borrowed(value)));
    }
    let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(value) else { return Some(Err(())) };
    if !mask_json(&mut json) {
        return Some(Ok(Cow::Borrowed(value)));
    }
    Some(serde_json::to_vec(&json).map(Cow::Owned).map_err(|_| ()))
}

/// Masks the secrets in `value`; whether it changed anything.
fn mask_json(value: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Object(fields) => {
            let mut changed = false;
            for (name, field) in fields.iter_mut() {
                if is_secret_field(name) {
                    if !field.is_null() {
                        *field = Value::String(MASK.into());
                        changed = true;
                    }
                } else if let (true, Value::String(text)) = (is_manifest_field(name), &*field) {
                    let shown = redact_secrets(text);
                    if shown != *text {
                        *field = Value::String(shown);
                        changed = true;
                    }
                } else {
                    changed |= mask_json(field);
                }
            }
            changed
        }
        Value::Array(items) => items.iter_mut().fold(false, |changed, item| mask_json(item) | changed),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_secrets_are_masked_and_the_rest_is_kept() {
        let text = "# my app\n[[webhook]]\npath = \"/gh\"   # GitHub\nsecret = 'hunter2'\n\n\
                    [[webhook]]\npath = \"/open\"\n\n[[webhook]]\nsecret = \"\"\"s3\ncret\"\"\"\npath = \"/x\"\n";
        let shown = redact_secrets(text);
        assert!(!shown.contains("hunter2") && !shown.contains("s3"), "{shown}");
        assert!(shown.contains("# my app") && shown.contains("path = \"/gh\"   # GitHub"), "{shown}");
        assert_eq!(shown.matches("\"(hidden)\"").count(), 2, "{shown}");
        // Still a manifest with the same shape.
        let back: toml::Table = toml::from_str(&shown).unwrap();
        assert_eq!(back["webhook"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn manifests_without_secrets_are_unchanged_and_broken_ones_hidden() {
        let text = "[[cron]]\nschedule = \"@daily\"\n";
        assert_eq!(redact_secrets(text), text);
        let broken = redact_secrets("[[webhook]\nsecret = \"x\"");
        assert!(broken.starts_with('#') && !broken.contains("\"x\""), "{broken}");
    }

    #[test]
    fn secret_keys_are_known() {
        assert!(is_secret_key("apps/secrets/web/TOKEN"));
        assert!(is_secret_key("workflows/triggers/approval/t-1"));
        assert!(!is_secret_key("machines/records/n1"));
        assert!(!is_secret_key("apps/data/web/default/k"));
        assert!(
            only_secrets("apps/secrets") && only_secrets("apps/s") && only_secrets("workflows/triggers/x")
        );
        assert!(!only_secrets("apps/") && !only_secrets("machines/") && !only_secrets("a"));
    }

    #[test]
    fn shared_component_bytes_are_internal() {
        let sha = "ab".repeat(32);
        for key in [
            format!("apps/blobs/{sha}"),
            format!("apps/blobs/{sha}/000000"),
            format!("workflows/blobs/{sha}/000003"),
        ] {
            assert!(is_internal(&key), "{key}");
        }
        for key in ["apps/records/web", "workflows/runs/r1", "kv/apps/blobs/x", "apps/blobsx", "machines/m"] {
            assert!(!is_internal(key), "{key}");
        }
        assert!(only_internal("apps/blobs/") && only_internal("workflows/bl") && only_internal("apps/b"));
        assert!(!only_internal("apps/") && !only_internal("workflows/") && !only_internal("kv/"));
    }

    // `redact`'s policy, one test per sentence.

    fn shown(key: &str, value: &str) -> String {
        String::from_utf8(redact(key, value.as_bytes()).into_owned()).unwrap()
    }

    #[test]
    fn a_value_in_the_user_key_space_is_shown_as_written() {
        let value = r#"{"secret": "mine", "password": "also mine"}"#;
        assert_eq!(shown("kv/app/config", value), value);
        assert_eq!(shown("kv/secrets/a", "hunter2"), "hunter2");
    }

    #[test]
    fn a_value_under_a_key_with_a_secrets_segment_is_masked_whole() {
        assert_eq!(shown("apps/secrets/web/TOKEN", "hunter2"), MASK);
        assert_eq!(shown("apps/secrets/web/TOKEN", r#"{"a": 1}"#), MASK);
        // A later namespace of secrets is covered without being listed.
        assert_eq!(shown("config/secrets/prod/db", "hunter2"), MASK);
        // The segment must be a namespace, not the value's own name.
        assert_eq!(shown("workflows/output/secrets", "42"), "42");
    }

    #[test]
    fn a_json_value_has_every_secret_field_masked_at_any_depth() {
        let trigger =
            r#"{"id":"t-1","spec":{"kind":"webhook","path":"/gh","secret":"hunter2"},"created_at":1}"#;
        let out = shown("workflows/triggers/flow/t-1", trigger);
        assert!(!out.contains("hunter2") && out.contains(MASK), "{out}");
        let back: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back["spec"]["path"], "/gh");
        // Anywhere in the store, under any later field of that kind.
        let later = r#"[{"db": {"admin_password": "pw1", "Client_Secret": "cs2", "user": "u"}}]"#;
        let out = shown("registry/services/db", later);
        assert!(!out.contains("pw1") && !out.contains("cs2") && out.contains("\"u\""), "{out}");
        // Escapes do not hide a field name.
        let escaped = r#"{"secr\u0065t": "hunter2"}"#;
        assert!(!shown("apps/triggers/web/t-2", escaped).contains("hunter2"));
        // An absent secret stays absent: `signed` can still be told.
        let unsigned = r#"{"spec":{"path":"/open","secret":null}}"#;
        assert_eq!(shown("apps/triggers/web/t-3", unsigned), unsigned);
    }

    #[test]
    fn a_json_value_has_its_manifest_text_shown_with_secrets_masked() {
        let record = serde_json::json!({
            "name": "web",
            "versions": [{
                "manifest": {"webhooks": [{"path": "/gh", "secret": "hunter2"}], "secrets": ["TOKEN"]},
                "manifest_text": "[[webhook]]\npath = \"/gh\"\nsecret = \"hunter2\"\n",
            }],
        })
        .to_string();
        let out = shown("apps/records/web", &record);
        assert!(!out.contains("hunter2"), "{out}");
        let back: serde_json::Value = serde_json::from_str(&out).unwrap();
        // Secret names are not secrets.
        assert_eq!(back["versions"][0]["manifest"]["secrets"][0], "TOKEN");
        assert!(back["versions"][0]["manifest_text"].as_str().unwrap().contains("path = \"/gh\""));
        let def = r#"{"versions":[{"manifest":"[[webhook]]\nsecret = 'hunter2'\n"}]}"#;
        assert!(!shown("workflows/defs/flow", def).contains("hunter2"));
    }

    #[test]
    fn a_value_under_a_key_known_to_hold_secrets_that_is_not_json_is_masked_whole() {
        assert_eq!(shown("apps/records/web", "secret = \"hunter2\""), MASK);
        assert_eq!(shown("workflows/defs/flow", "{ not json secret"), MASK);
    }

    #[test]
    fn any_other_value_is_shown_as_written() {
        assert_eq!(shown("machines/n1", "not json"), "not json");
        let record = r#"{"name":"n1","state":"running"}"#;
        assert_eq!(shown("machines/n1", record), record);
    }

    #[test]
    fn a_value_with_nothing_to_hide_is_returned_as_is() {
        let record = br#"{ "name" : "web",  "secret" : null }"#;
        assert!(matches!(redact("apps/records/web", record), Cow::Borrowed(_)));
        let run = br#"{"id":"r1","input":{"n":1}}"#;
        assert!(matches!(redact("workflows/runs/r1", run), Cow::Borrowed(_)));
    }

    #[test]
    fn manifest_secrets_are_masked_at_any_depth() {
        let text = "[db]\nadmin_password = \"pw\"\n[[webhook]]\npath = \"/a\"\nsecret = \"s\"\n";
        let out = redact_secrets(text);
        assert!(!out.contains("\"pw\"") && !out.contains("\"s\""), "{out}");
        assert!(out.contains("[db]") && out.contains("path = \"/a\""), "{out}");
    }
}
