//! What calls an app besides a client: cron schedules and changes in
//! hearth's store call one of its routes, and webhooks put a signature check
//! in front of one. Declared in `hearth.toml`, or added and removed through
//! the API (`hearth app trigger add`), which keeps them apart from the
//! app's versions so a redeploy does not drop them:
//!
//! ```toml
//! [[cron]]
//! schedule = "*/5 * * * *"     # five fields, or six with seconds first; @daily...
//! timezone = "Europe/Paris"    # default UTC
//! path = "/tasks/cleanup"      # the route called: POST, default "/"
//! body = '{"why": "cron"}'     # default empty
//!
//! [[event]]
//! prefix = "machines/"         # a call per change in hearth's store under it
//! kinds = ["put"]              # default both put and delete
//! path = "/on-machine"         # POSTed {"kind", "key", "value", "revision"}
//!
//! [[webhook]]
//! path = "/github"             # deliveries under this path: once per Idempotency-Key,
//! secret = "…"                 # and, with a secret, signed: X-Hearth-Signature: sha256=HMAC(body)
//! ```
//!
//! A webhook delivery with an `Idempotency-Key` header reaches the app once:
//! the key is claimed in the store (`apps/deliveries/NAME/HASH`, kept a day)
//! before the app runs, and a redelivery is answered with the first
//! answer's status, marked `X-Hearth-Duplicate: true`. An answer of 500 or
//! more forgets the key, so the sender's retry is handled again; so does a
//! delivery dropped unanswered, and a claim left pending by a daemon that
//! died is taken over once it is well past the app's timeout.
//!
//! Where webhooks nest, the longest path's check applies ([`hearth_triggers::guard`]),
//! to every spelling of the path an app's router might read as it. The
//! checks are installed with the version that serves, so no request meets
//! a version without them.
//!
//! Calls made by a trigger carry `X-Hearth-Trigger: cron|event`, the
//! trigger's id in `X-Hearth-Trigger-Id` and, from cron, the firing's time
//! (Unix milliseconds) in `X-Hearth-Trigger-Time`; they run under the app's limits like any
//! request, and show in `hearth app logs`.
//!
//! **Cron fires at most once per firing.** The firing is recorded in the
//! store (`apps/cron/NAME/ID`, by compare-and-swap: one daemon of several
//! on a store wins) before the app is called, so a restart never repeats
//! one; a crash between the two loses that one call. A firing that comes
//! while the last one's call still runs, or while the app cannot serve, is
//! skipped and logged. Firings missed
//! while hearth was down collapse into one when it comes back (see
//! [`hearth_triggers::due`]). Workflows, which are durable, get exactly once.
//!
//! The rooms: this module holds the trigger specs and their checks;
//! `store` where triggers are kept and how they are added and removed;
//! `guards` the webhooks' checks each serving version carries (the checks
//! themselves are `hearth-triggers`' webhook guard); `drivers` the cron
//! firings and event calls.

mod drivers;
mod guards;
mod store;

use hearth_triggers::spec::{self, Kind, OwnKeys};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::record;

pub(crate) use drivers::run;
pub use guards::{DELIVERIES, delivery_key};
pub(crate) use guards::{Guards, guards};
pub(crate) use store::delete_ops;
pub use store::{CRON_STATE, TRIGGERS};

/// Largest body a cron trigger sends.
const MAX_BODY: usize = 64 << 10;

/// A cron schedule that calls one of the app's routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cron {
    pub schedule: String,
    #[serde(default = "utc")]
    pub timezone: String,
    /// The route called, with POST.
    #[serde(default = "root")]
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
}

/// Changes in hearth's store under a prefix, each POSTed to a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub prefix: String,
    /// `put`, `delete`; empty means both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    #[serde(default = "root")]
    pub path: String,
}

/// A route that takes deliveries: signed, if it has a secret, and handled
/// once per `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub path: String,
    /// Requests must carry `X-Hearth-Signature: sha256=HMAC-SHA256(body)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

fn utc() -> String {
    "UTC".into()
}

fn root() -> String {
    "/".into()
}

/// One trigger, of any kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Spec {
    Cron(Cron),
    Event(Event),
    Webhook(Webhook),
}

impl Spec {
    /// Checks the trigger, so that a bad one is refused when it is declared
    /// rather than failing when it fires.
    pub fn validate(&self) -> Result<(), Error> {
        match self {
            Spec::Cron(c) => {
                spec::check_schedule(&c.schedule, &c.timezone).map_err(Error::Manifest)?;
                check_path("cron", &c.path)?;
                if c.body.len() > MAX_BODY {
                    return Err(Error::Manifest(format!(
                        "the cron body is {} bytes; keep it under {} KiB",
                        c.body.len(),
                        MAX_BODY >> 10
                    )));
                }
            }
            Spec::Event(e) => {
                spec::check_event(&e.prefix, &e.kinds, OWN_KEYS).map_err(Error::Manifest)?;
                check_path("event", &e.path)?;
            }
            Spec::Webhook(w) => {
                check_path("webhook", &w.path)?;
                spec::check_secret(&w.path, w.secret.as_deref()).map_err(Error::Manifest)?;
            }
        }
        Ok(())
    }
}

impl hearth_triggers::Spec for Spec {
    fn kind(&self) -> Kind {
        match self {
            Spec::Cron(_) => Kind::Cron,
            Spec::Event(_) => Kind::Event,
            Spec::Webhook(_) => Kind::Webhook,
        }
    }
}

/// What apps' event triggers may not follow.
const OWN_KEYS: OwnKeys = OwnKeys {
    prefix: record::APPS,
    why: "apps cannot trigger on apps' own records and data (a key-value write would call the app again)",
};

/// A route path a trigger calls (it may carry a query), or, for a webhook,
/// the path it guards: plain segments only, so that the path the guard
/// matches is the path the app reads.
fn check_path(what: &str, path: &str) -> Result<(), Error> {
    let uri_ok = path.starts_with('/')
        && path.len() <= 1024
        && !path.contains('#')
        && path.bytes().all(|b| b.is_ascii_graphic())
        && path.parse::<http::uri::PathAndQuery>().is_ok();
    if !uri_ok {
        return Err(Error::Manifest(format!(
            "{what} path {path:?} is not valid: write a route path such as \"/tasks/cleanup\" (starting with /, \
             no spaces or fragment)"
        )));
    }
    if what == "webhook" {
        let plain = path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@".contains(&b))
            && !path.contains("//")
            && path.split('/').all(|segment| segment != "." && segment != "..");
        if !plain {
            return Err(Error::Manifest(format!(
                "webhook path {path:?} is not valid: a webhook guards a plain path such as \"/hooks/github\" \
                 (no query, percent-escapes, empty or dot segments)"
            )));
        }
    }
    Ok(())
}

/// Checks a manifest's triggers together: each one, and no two webhooks on
/// one path.
pub(crate) fn validate_all(specs: &[Spec]) -> Result<(), Error> {
    let mut paths = std::collections::HashSet::new();
    for spec in specs {
        spec.validate()?;
        if let Spec::Webhook(w) = spec
            && !paths.insert(w.path.trim_end_matches('/').to_ascii_lowercase())
        {
            return Err(Error::Manifest(format!("two webhooks have the path {:?}", w.path)));
        }
    }
    Ok(())
}

/// Whether `spec` is a webhook on `path`, compared as the ingress matches
/// paths: without a trailing slash, in any case.
fn same_webhook(spec: &Spec, path: &str) -> bool {
    matches!(spec, Spec::Webhook(w) if w.path.trim_end_matches('/').eq_ignore_ascii_case(path.trim_end_matches('/')))
}

/// Refuses a version whose manifest declares a webhook on a path that a
/// webhook added by API already guards: which secret applies would be a
/// guess.
pub(crate) fn check_clash(app: &str, manifest: &[Spec], added: &[Trigger]) -> Result<(), Error> {
    for spec in manifest {
        let Spec::Webhook(w) = spec else { continue };
        if let Some(other) = added.iter().find(|t| same_webhook(&t.spec, &w.path)) {
            return Err(Error::Invalid(format!(
                "the hearth.toml declares a webhook on {:?}, and app {app:?} already has one there (trigger {}, \
                 added by `hearth app trigger add`): remove one of them (`hearth app trigger rm {app} {}`)",
                w.path, other.id, other.id
            )));
        }
    }
    Ok(())
}

/// A trigger of an app as listed: where it came from, and what it does.
pub type Trigger = hearth_triggers::Trigger<Spec>;
type Stored = hearth_triggers::Stored<Spec>;

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(schedule: &str, path: &str) -> Spec {
        Spec::Cron(Cron {
            schedule: schedule.into(),
            timezone: "UTC".into(),
            path: path.into(),
            body: String::new(),
        })
    }

    #[test]
    fn triggers_are_checked_when_declared() {
        assert!(cron("*/5 * * * *", "/tick").validate().is_ok());
        for (spec, needle) in [
            (cron("* * *", "/"), "has 3 fields"),
            (cron("* * * * *", "tick"), "not valid"),
            (cron("* * * * *", "/a b"), "not valid"),
            (cron("* * * * *", "/a#b"), "not valid"),
            (
                Spec::Event(Event { prefix: "apps/data/".into(), kinds: vec![], path: "/".into() }),
                "not allowed",
            ),
            (
                Spec::Event(Event {
                    prefix: "machines/".into(),
                    kinds: vec!["poke".into()],
                    path: "/".into(),
                }),
                "not one of",
            ),
            (Spec::Webhook(Webhook { path: "/gh".into(), secret: Some(String::new()) }), "empty secret"),
            (Spec::Webhook(Webhook { path: "gh".into(), secret: None }), "not valid"),
        ] {
            let error = spec.validate().unwrap_err().to_string();
            assert!(error.contains(needle), "{spec:?}: {error}");
        }
        let two = [
            Spec::Webhook(Webhook { path: "/gh".into(), secret: Some("a".into()) }),
            Spec::Webhook(Webhook { path: "/gh/".into(), secret: None }),
        ];
        assert!(validate_all(&two).unwrap_err().to_string().contains("two webhooks"));
    }

    #[test]
    fn specs_are_tagged_by_kind_in_json() {
        let json = serde_json::to_value(cron("@daily", "/")).unwrap();
        assert_eq!(json["kind"], "cron");
        let back: Spec =
            serde_json::from_value(serde_json::json!({"kind": "webhook", "path": "/gh", "secret": "s"}))
                .unwrap();
        assert_eq!(back, Spec::Webhook(Webhook { path: "/gh".into(), secret: Some("s".into()) }));
        let unknown = serde_json::from_value::<Spec>(
            serde_json::json!({"kind": "cron", "schedule": "@daily", "paht": "/"}),
        );
        assert!(unknown.is_err());
    }

    #[test]
    fn webhook_paths_are_plain() {
        let hook = |path: &str| Spec::Webhook(Webhook { path: path.into(), secret: None }).validate();
        assert!(hook("/hooks/git-hub_1.v2~x").is_ok());
        for bad in ["/h?x=1", "/h%41", "/a//b", "/a/../b", "/a/./b", "/a b", "/\u{e9}"] {
            let error = hook(bad).unwrap_err().to_string();
            assert!(error.contains("not valid"), "{bad}: {error}");
        }
        // A route a cron calls may carry a query.
        assert!(cron("@daily", "/tasks?full=1").validate().is_ok());
        assert!(cron("@daily", "/t\u{e4}").validate().is_err());
        assert!(cron("@daily", "/t\tx").validate().is_err());
    }
}
