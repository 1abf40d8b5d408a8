//! What every trigger is, whatever it does: its kind, its id, and the checks
//! that refuse a bad one when it is declared rather than when it fires.
//! Apps and workflows each have their own `Spec` (a cron trigger calls a
//! route, or starts a run with an input); both implement [`Spec`] here and
//! check their triggers with the functions below, so ids and rules agree.

use crate::stored::Trigger;

/// The three kinds of trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Cron,
    Event,
    Webhook,
}

impl Kind {
    /// `cron`, `event`, `webhook`: the JSON tag, the id's prefix, and the
    /// `X-Hearth-Trigger` header's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Cron => "cron",
            Kind::Event => "event",
            Kind::Webhook => "webhook",
        }
    }
}

/// A subsystem's trigger spec, as far as the shared machinery needs it.
pub trait Spec {
    fn kind(&self) -> Kind;
}

/// Where a listed trigger came from: the active version's `hearth.toml`.
pub const FROM_MANIFEST: &str = "manifest";
/// Where a listed trigger came from: added through the API.
pub const FROM_API: &str = "api";

/// A manifest's triggers with their ids: the kind and the position among
/// that kind (`cron-0`, `cron-1`, `webhook-0`), stable across redeploys
/// that keep the order.
pub fn from_manifest<S: Spec>(specs: impl IntoIterator<Item = S>, created_at: u64) -> Vec<Trigger<S>> {
    let mut counts = std::collections::HashMap::<Kind, usize>::new();
    specs
        .into_iter()
        .map(|spec| {
            let n = counts.entry(spec.kind()).or_default();
            let id = format!("{}-{n}", spec.kind().as_str());
            *n += 1;
            Trigger { id, source: FROM_MANIFEST.into(), spec, created_at }
        })
        .collect()
}

/// Checks a cron trigger's schedule in its time zone.
pub fn check_schedule(schedule: &str, timezone: &str) -> Result<crate::Schedule, String> {
    crate::Schedule::parse(schedule, timezone)
}

/// The keys a subsystem's event triggers may not follow: its own, because a
/// firing writes there and would fire again.
#[derive(Debug, Clone, Copy)]
pub struct OwnKeys {
    /// The subsystem's key prefix (`apps/`, `workflows/`).
    pub prefix: &'static str,
    /// Why, for the message: "apps cannot trigger on apps' own records ...".
    pub why: &'static str,
}

/// Checks an event trigger: a prefix that is not empty, not the
/// subsystem's own keys, not only secrets and not only hearth's own
/// plumbing; kinds `put` and `delete`.
pub fn check_event(prefix: &str, kinds: &[String], own: OwnKeys) -> Result<(), String> {
    if prefix.is_empty() || prefix.starts_with(own.prefix) {
        return Err(format!(
            "event prefix {prefix:?} is not allowed: {}; name a prefix such as \"machines/\"",
            own.why
        ));
    }
    if crate::private::only_secrets(prefix) {
        return Err(format!("event prefix {prefix:?} is not allowed: the values there hold secrets"));
    }
    if crate::private::only_internal(prefix) {
        return Err(format!(
            "event prefix {prefix:?} is not allowed: the keys there are hearth's own (components' bytes shared between hosts), which no trigger sees"
        ));
    }
    if let Some(k) = kinds.iter().find(|k| *k != "put" && *k != "delete") {
        return Err(format!("event kind {k:?} is not one of \"put\", \"delete\""));
    }
    Ok(())
}

/// Checks a webhook's secret: absent, or not empty (an empty key would sign
/// anything anyone computes).
pub fn check_secret(path: &str, secret: Option<&str>) -> Result<(), String> {
    if secret == Some("") {
        return Err(format!("webhook {path:?} has an empty secret; remove it or set one"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Spec for Kind {
        fn kind(&self) -> Kind {
            *self
        }
    }

    #[test]
    fn manifest_ids_count_by_kind() {
        let listed = from_manifest([Kind::Cron, Kind::Webhook, Kind::Cron, Kind::Event], 7);
        let ids: Vec<&str> = listed.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["cron-0", "webhook-0", "cron-1", "event-0"]);
        assert!(listed.iter().all(|t| t.source == FROM_MANIFEST && t.created_at == 7));
    }

    #[test]
    fn event_triggers_keep_off_their_own_keys_secrets_and_internal_keys() {
        let own = OwnKeys { prefix: "apps/", why: "apps cannot trigger on apps' own records" };
        assert!(check_event("machines/", &["put".into()], own).is_ok());
        for (prefix, kinds, needle) in [
            ("", vec![], "not allowed: apps cannot"),
            ("apps/data/", vec![], "not allowed: apps cannot"),
            ("machines/", vec!["poke".to_owned()], "not one of"),
            ("workflows/defs/", vec![], "hold secrets"),
            ("workflows/blobs/", vec![], "hearth's own"),
        ] {
            let error = check_event(prefix, &kinds, own).unwrap_err();
            assert!(error.contains(needle), "{prefix}: {error}");
        }
        assert!(check_secret("/gh", Some("")).unwrap_err().contains("empty secret"));
        assert!(check_secret("/gh", None).is_ok() && check_secret("/gh", Some("s")).is_ok());
    }
}
