//! What triggers must never hand on: store keys that hold secrets, and the
//! secrets written in a manifest.
//!
//! An event trigger passes each change's value to an app or a workflow, and
//! a manifest is shown back to whoever reads the app or workflow. Webhook
//! secrets and app secrets live in a few places in the store; changes there
//! reach no event trigger, whatever its prefix, and a manifest is shown
//! with its webhooks' secrets masked.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// Store prefixes whose values hold secrets: app secrets, the manifests
/// (which may carry webhook secrets) and the triggers added by API.
pub const SECRET_PREFIXES: &[&str] =
    &["apps/secrets/", "apps/records/", "apps/triggers/", "workflows/defs/", "workflows/triggers/"];

/// Whether a change to `key` may be shown to an event trigger.
pub fn is_secret_key(key: &str) -> bool {
    SECRET_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Whether an event trigger on `prefix` would only ever match keys that
/// hold secrets (which it never sees): the prefix is inside one of
/// [`SECRET_PREFIXES`], or reaches into its last segment (`apps/secr`).
pub fn only_secrets(prefix: &str) -> bool {
    is_secret_key(prefix)
        || SECRET_PREFIXES.iter().any(|p| {
            let last_segment = p[..p.len() - 1].rfind('/').map_or(0, |i| i + 1);
            p.starts_with(prefix) && prefix.len() > last_segment
        })
}

/// What a secret is shown as.
pub const MASK: &str = "(hidden)";

/// `manifest` with the `secret` of every `[[webhook]]` replaced by
/// [`MASK`], everything else (comments, layout) as written. A manifest that
/// does not parse is shown as nothing but a note, since where its secrets
/// are cannot be told.
pub fn redact_secrets(manifest: &str) -> String {
    let table = match DeTable::parse(manifest) {
        Ok(t) => t,
        Err(_) => {
            return "# (this manifest does not parse, so it is not shown: it may hold secrets)\n".into();
        }
    };
    let mut spans: Vec<Range<usize>> = Vec::new();
    if let Some(webhooks) = table.get_ref().get("webhook") {
        let hooks: Vec<&DeValue<'_>> = match webhooks.get_ref() {
            DeValue::Array(items) => items.iter().map(|v| v.get_ref()).collect(),
            table @ DeValue::Table(_) => vec![table],
            _ => Vec::new(),
        };
        for hook in hooks {
            if let DeValue::Table(t) = hook
                && let Some(secret) = t.get("secret")
            {
                spans.push(secret.span());
            }
        }
    }
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
}
