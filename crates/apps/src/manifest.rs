//! `hearth.toml`: what an app declares it needs.
//!
//! ```toml
//! # Key-value stores the app opens by name with wasi:keyvalue/store.open.
//! key_value = ["default"]
//! # Secrets: names only. Values are set apart (`hearth app secret set`) and
//! # never stored with the app's versions; the app reads them with wasi:config.
//! secrets = ["api_token"]
//! # Hosts the app may call with outgoing wasi:http. Deny by default.
//! outbound = ["https://api.github.com", "http://127.0.0.1:9000", "*.example.com"]
//!
//! # Config variables, read with wasi:config/store.get.
//! [config]
//! greeting = "Hello"
//!
//! # Optional, within the daemon's ceilings.
//! [limits]
//! memory_mib = 64
//! cpu_ms = 500
//! timeout_ms = 10000
//!
//! # Triggers (see `triggers`): [[cron]], [[event]] and [[webhook]].
//! [[cron]]
//! schedule = "*/5 * * * *"
//! path = "/tasks/cleanup"
//! ```
//!
//! An app that imports an interface its manifest does not declare (say
//! `wasi:keyvalue` with no `key_value`) is refused at deploy time.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{Error, triggers};

/// A parsed, validated `hearth.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Manifest {
    /// Key-value store names.
    pub key_value: Vec<String>,
    /// Config variables and their values.
    pub config: BTreeMap<String, String>,
    /// Secret names (values live apart from the manifest).
    pub secrets: Vec<String>,
    /// Outbound allow-list entries, as written.
    pub outbound: Vec<String>,
    /// Limits the app asks for; unset ones take the daemon's defaults.
    pub limits: LimitsRequest,
    /// `[[cron]]`: schedules that call a route.
    #[serde(rename = "cron", skip_serializing_if = "Vec::is_empty")]
    pub crons: Vec<triggers::Cron>,
    /// `[[event]]`: changes in hearth's store that call a route.
    #[serde(rename = "event", skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<triggers::Event>,
    /// `[[webhook]]`: routes whose requests must be signed.
    #[serde(rename = "webhook", skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<triggers::Webhook>,
    /// Set for handlers built from source ([`Manifest::for_source`]), never
    /// read from `hearth.toml`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub from_source: bool,
}

/// The `[limits]` table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsRequest {
    pub memory_mib: Option<u64>,
    pub cpu_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
}

/// Limits one request of an app runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Linear memory, in bytes, summed over the instance's memories.
    pub memory_bytes: u64,
    /// CPU time: time spent running the app's code, in milliseconds (measured
    /// in epoch ticks of 10 ms, so a budget is exact to a tick).
    pub cpu_ms: u64,
    /// Wall-clock time from the request to the end of the response body.
    pub timeout_ms: u64,
}

impl Limits {
    /// The defaults every app gets unless its manifest asks otherwise.
    pub const DEFAULT: Limits = Limits { memory_bytes: 128 << 20, cpu_ms: 5_000, timeout_ms: 30_000 };
    /// The most a manifest can ask for.
    pub const CEILING: Limits = Limits { memory_bytes: 1 << 30, cpu_ms: 60_000, timeout_ms: 300_000 };
}

/// The file as written, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Raw {
    key_value: Vec<String>,
    config: BTreeMap<String, toml::Value>,
    secrets: Vec<String>,
    outbound: Vec<String>,
    limits: LimitsRequest,
    cron: Vec<triggers::Cron>,
    event: Vec<triggers::Event>,
    webhook: Vec<triggers::Webhook>,
}

impl Manifest {
    /// Parses and validates `hearth.toml`.
    pub fn parse(text: &str) -> Result<Manifest, Error> {
        let raw: Raw =
            toml::from_str(text).map_err(|e| Error::Manifest(e.to_string().trim_end().to_owned()))?;
        let mut config = BTreeMap::new();
        for (key, value) in raw.config {
            check_name("config variable", &key, 128)?;
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(Error::Manifest(format!(
                        "config variable {key:?} is a {}; give a string, number or boolean",
                        other.type_str()
                    )));
                }
            };
            config.insert(key, value);
        }
        let manifest = Manifest {
            key_value: raw.key_value,
            config,
            secrets: raw.secrets,
            outbound: raw.outbound,
            limits: raw.limits,
            crons: raw.cron,
            events: raw.event,
            webhooks: raw.webhook,
            from_source: false,
        };
        manifest.validate()?;
        Ok(manifest)
    }

    /// The manifest of a handler built from source: `hearth.toml` if one
    /// was given, with the `default` key-value store the handler's `kv`
    /// opens. The engines built from source always import outbound HTTP;
    /// without `outbound`, their calls are refused, not their deploy.
    pub fn for_source(text: Option<&str>) -> Result<Manifest, Error> {
        let mut manifest = match text {
            Some(text) => Manifest::parse(text)?,
            None => Manifest::default(),
        };
        if !manifest.key_value.iter().any(|s| s == "default") {
            manifest.key_value.insert(0, "default".into());
        }
        manifest.from_source = true;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), Error> {
        for store in &self.key_value {
            check_name("key-value store", store, 64)?;
        }
        if let Some(dup) = duplicate(&self.key_value) {
            return Err(Error::Manifest(format!("key-value store {dup:?} is declared twice")));
        }
        for secret in &self.secrets {
            check_name("secret", secret, 128)?;
            if self.config.contains_key(secret) {
                return Err(Error::Manifest(format!(
                    "{secret:?} is both a config variable and a secret: the app reads both with \
                     wasi:config, so give them different names"
                )));
            }
        }
        if let Some(dup) = duplicate(&self.secrets) {
            return Err(Error::Manifest(format!("secret {dup:?} is declared twice")));
        }
        for entry in &self.outbound {
            OutboundRule::parse(entry)?;
        }
        triggers::validate_all(&self.triggers())
    }

    /// The triggers declared, crons first, then events, then webhooks.
    pub fn triggers(&self) -> Vec<triggers::Spec> {
        let crons = self.crons.iter().cloned().map(triggers::Spec::Cron);
        let events = self.events.iter().cloned().map(triggers::Spec::Event);
        crons.chain(events).chain(self.webhooks.iter().cloned().map(triggers::Spec::Webhook)).collect()
    }

    /// The allow-list, parsed.
    pub(crate) fn outbound_rules(&self) -> Vec<OutboundRule> {
        // Validated on parse; a record written by an older hearth that no
        // longer parses allows nothing rather than everything.
        self.outbound.iter().filter_map(|e| OutboundRule::parse(e).ok()).collect()
    }

    /// The limits a request of this app runs under, given the daemon's
    /// defaults and ceilings.
    pub fn limits(&self, defaults: Limits, ceiling: Limits) -> Result<Limits, Error> {
        let pick =
            |asked: Option<u64>, default: u64, max: u64, what: &str, unit: &str, scale: u64| match asked {
                None => Ok(default),
                Some(0) => Err(Error::Manifest(format!("limits.{what} must be more than 0"))),
                Some(v) if v.saturating_mul(scale) > max => Err(Error::Manifest(format!(
                    "limits.{what} = {v} is over this daemon's ceiling of {} {unit}",
                    max / scale
                ))),
                Some(v) => Ok(v * scale),
            };
        Ok(Limits {
            memory_bytes: pick(
                self.limits.memory_mib,
                defaults.memory_bytes,
                ceiling.memory_bytes,
                "memory_mib",
                "MiB",
                1 << 20,
            )?,
            cpu_ms: pick(self.limits.cpu_ms, defaults.cpu_ms, ceiling.cpu_ms, "cpu_ms", "ms", 1)?,
            timeout_ms: pick(
                self.limits.timeout_ms,
                defaults.timeout_ms,
                ceiling.timeout_ms,
                "timeout_ms",
                "ms",
                1,
            )?,
        })
    }
}

fn duplicate(names: &[String]) -> Option<&String> {
    names.iter().enumerate().find(|(i, n)| names[..*i].contains(n)).map(|(_, n)| n)
}

fn check_name(what: &str, name: &str, max: usize) -> Result<(), Error> {
    // Dots separate the words of a config key: none at either end, and
    // never two in a row (config and secrets are keys of `hearth config`).
    let ok = !name.is_empty()
        && name.len() <= max
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(Error::Manifest(format!(
            "{what} name {name:?} is not valid: use 1 to {max} letters, digits, `_`, `-` or `.` (between words)"
        )))
    }
}

/// One entry of the outbound allow-list: `[SCHEME://]HOST[:PORT]`, where
/// HOST may be `*` (any host) or `*.DOMAIN` (any subdomain), and PORT may be
/// `*`. Without a scheme both http and https are allowed; without a port,
/// only the scheme's default port (80, 443).
///
/// Or `service:NAME`: the app may call `http://NAME.service.hearth/...`,
/// which hearth resolves to one of the service's passing instances (see
/// `outbound::service`). Only this entry lets a request reach a service:
/// `*` and `*.service.hearth` do not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutboundRule {
    scheme: Option<String>,
    host: HostPattern,
    port: PortPattern,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Exact(String),
    /// `*.example.com` matches `a.example.com`, not `example.com`.
    Suffix(String),
    /// `service:NAME`: matches no host; [`OutboundRule::service`] names it.
    Service(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPattern {
    Default,
    Any,
    Exact(u16),
}

impl OutboundRule {
    pub(crate) fn parse(entry: &str) -> Result<OutboundRule, Error> {
        if let Some(name) = entry.strip_prefix("service:") {
            return Self::parse_service(entry, name);
        }
        let bad = |reason: &str| {
            Error::Manifest(format!(
                "outbound entry {entry:?} is not valid: {reason} (write [SCHEME://]HOST[:PORT], \
                 e.g. \"https://api.example.com\" or \"http://127.0.0.1:9000\")"
            ))
        };
        let (scheme, rest) = match entry.split_once("://") {
            Some((s, rest)) => {
                let s = s.to_ascii_lowercase();
                if s != "http" && s != "https" {
                    return Err(bad("the scheme must be http or https"));
                }
                (Some(s), rest)
            }
            None => (None, entry),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') {
            return Err(bad("it names a path; list hosts only"));
        }
        let (host, port) = split_host_port(rest);
        let port = match port {
            None => PortPattern::Default,
            Some("*") => PortPattern::Any,
            Some(p) => {
                PortPattern::Exact(p.parse().map_err(|_| bad("the port is not a number from 1 to 65535"))?)
            }
        };
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            check_host(domain).map_err(&bad)?;
            HostPattern::Suffix(domain.to_owned())
        } else {
            check_host(&host).map_err(&bad)?;
            HostPattern::Exact(host)
        };
        Ok(OutboundRule { scheme, host, port })
    }

    /// `service:NAME`, with the name checked as the registry checks it: the
    /// name is a DNS label of `NAME.service.hearth`.
    fn parse_service(entry: &str, name: &str) -> Result<OutboundRule, Error> {
        hearth_store::names::check_label("service", name, SERVICE_NAME_MAX).map_err(|reason| {
            Error::Manifest(format!(
                "outbound entry {entry:?} is not valid: {reason} (write service:NAME with the name of a \
                 service, e.g. \"service:backend\", to call http://backend.service.hearth/)"
            ))
        })?;
        Ok(OutboundRule {
            scheme: Some("http".into()),
            host: HostPattern::Service(name.to_owned()),
            port: PortPattern::Default,
        })
    }

    /// The service this rule lets the app call, for `service:NAME`.
    pub(crate) fn service(&self) -> Option<&str> {
        match &self.host {
            HostPattern::Service(name) => Some(name),
            _ => None,
        }
    }

    /// Whether a request to `scheme://host:port` is allowed. `host` is
    /// lowercase, without brackets for IPv6. A `service:NAME` rule allows no
    /// host: services are reached through [`OutboundRule::service`].
    pub(crate) fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host_ok = match &self.host {
            HostPattern::Service(_) => false,
            HostPattern::Any => true,
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(d) => {
                host.len() > d.len() + 1 && host.ends_with(d.as_str()) && {
                    host.as_bytes()[host.len() - d.len() - 1] == b'.'
                }
            }
        };
        host_ok && self.allows_scheme_and_port(scheme, port)
    }

    /// Whether this rule names `ip` itself, so that a request on `scheme`
    /// and `port` may reach it although it is an address apps are kept from
    /// (loopback, link-local, the host's own: see `outbound`). A rule names
    /// an address when its host is that address as an IP literal
    /// (`http://127.0.0.1:8080`), or when its host is `localhost` and the
    /// address is a loopback one. Wildcards name nothing.
    pub(crate) fn names_address(&self, scheme: &str, ip: IpAddr, port: u16) -> bool {
        let HostPattern::Exact(host) = &self.host else { return false };
        let named = match host.parse::<IpAddr>() {
            Ok(literal) => literal.to_canonical() == ip.to_canonical(),
            Err(_) => host == "localhost" && ip.to_canonical().is_loopback(),
        };
        named && self.allows_scheme_and_port(scheme, port)
    }

    fn allows_scheme_and_port(&self, scheme: &str, port: u16) -> bool {
        if self.scheme.as_deref().is_some_and(|s| s != scheme) {
            return false;
        }
        match self.port {
            PortPattern::Any => true,
            PortPattern::Exact(p) => p == port,
            PortPattern::Default => port == default_port(scheme),
        }
    }
}

/// The longest service name, as the registry has it.
const SERVICE_NAME_MAX: usize = 50;

pub(crate) fn default_port(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

/// Splits `host:port`, `[v6]:port`, `host` or `[v6]`; brackets are removed.
pub(crate) fn split_host_port(s: &str) -> (&str, Option<&str>) {
    if let Some(rest) = s.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':')),
            None => (s, None),
        };
    }
    match s.rsplit_once(':') {
        // More than one colon and no brackets: a bare IPv6 address.
        Some((h, _)) if h.contains(':') => (s, None),
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    }
}

fn check_host(host: &str) -> Result<(), &'static str> {
    if host.is_empty() || host.len() > 253 {
        return Err("the host is empty or too long");
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok =
        |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if host.split('.').all(label_ok) { Ok(()) } else { Err("the host is not a valid host name") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_section() {
        let m = Manifest::parse(
            r#"
            key_value = ["default", "sessions"]
            secrets = ["token"]
            outbound = ["https://api.example.com", "localhost:*"]
            [config]
            greeting = "hi"
            port = 8080
            debug = true
            [limits]
            memory_mib = 64
            "#,
        )
        .unwrap();
        assert_eq!(m.key_value, ["default", "sessions"]);
        assert_eq!(m.config["port"], "8080");
        assert_eq!(m.config["debug"], "true");
        assert_eq!(m.limits.memory_mib, Some(64));
        let limits = m.limits(Limits::DEFAULT, Limits::CEILING).unwrap();
        assert_eq!(limits.memory_bytes, 64 << 20);
        assert_eq!(limits.cpu_ms, Limits::DEFAULT.cpu_ms);
    }

    #[test]
    fn empty_text_is_an_empty_manifest() {
        assert_eq!(Manifest::parse("").unwrap(), Manifest::default());
    }

    #[test]
    fn refuses_bad_manifests_with_the_reason() {
        let cases = [
            ("key_value = \"default\"", "invalid type"),
            ("stores = [\"x\"]", "unknown field"),
            ("key_value = [\"a/b\"]", "not valid"),
            ("key_value = [\"a\", \"a\"]", "declared twice"),
            ("secrets = [\"x\"]\n[config]\nx = \"1\"", "both a config variable and a secret"),
            ("outbound = [\"ftp://x\"]", "scheme must be http or https"),
            ("outbound = [\"https://x.com/api\"]", "names a path"),
            ("outbound = [\"x.com:99999\"]", "port"),
            ("outbound = [\"service:Back_end\"]", "service name \"Back_end\" is not valid"),
            ("outbound = [\"service:\"]", "write service:NAME"),
            ("outbound = [\"service:a.b\"]", "lowercase letters, digits and dashes"),
            ("outbound = [\"service:-a\"]", "not starting or ending with a dash"),
            ("[config]\nx = [1]", "is a array"),
            ("[limits]\nmemory_mib = 0", ""),
            ("key_value = [", "TOML parse error"),
        ];
        for (text, want) in cases {
            let got =
                Manifest::parse(text).and_then(|m| m.limits(Limits::DEFAULT, Limits::CEILING).map(|_| ()));
            let err = got.expect_err(text).to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn limits_over_the_ceiling_are_refused() {
        let m = Manifest::parse("[limits]\nmemory_mib = 4096").unwrap();
        let err = m.limits(Limits::DEFAULT, Limits::CEILING).unwrap_err().to_string();
        assert!(err.contains("ceiling of 1024 MiB"), "{err}");
    }

    #[test]
    fn outbound_rules_match() {
        let check = |rule: &str, scheme: &str, host: &str, port: u16| {
            OutboundRule::parse(rule).unwrap().allows(scheme, host, port)
        };
        assert!(check("https://api.example.com", "https", "api.example.com", 443));
        assert!(!check("https://api.example.com", "http", "api.example.com", 80));
        assert!(!check("https://api.example.com", "https", "api.example.com", 8443));
        assert!(check("api.example.com", "http", "api.example.com", 80));
        assert!(check("http://127.0.0.1:9000", "http", "127.0.0.1", 9000));
        assert!(!check("http://127.0.0.1:9000", "http", "127.0.0.1", 9001));
        assert!(check("http://127.0.0.1:*", "http", "127.0.0.1", 9001));
        assert!(check("*.example.com", "https", "a.example.com", 443));
        assert!(!check("*.example.com", "https", "example.com", 443));
        assert!(!check("*.example.com", "https", "badexample.com", 443));
        assert!(check("*", "https", "anything.org", 443));
        assert!(check("http://[::1]:8080", "http", "::1", 8080));
        assert!(check("HTTPS://API.Example.com/", "https", "api.example.com", 443));
    }

    #[test]
    fn a_service_rule_names_a_service_and_allows_no_host() {
        let rule = OutboundRule::parse("service:backend").unwrap();
        assert_eq!(rule.service(), Some("backend"));
        assert!(!rule.allows("http", "backend.service.hearth", 80));
        assert!(!rule.allows("http", "backend", 80));
        assert!(!rule.names_address("http", "127.0.0.1".parse().unwrap(), 80));
        assert_eq!(OutboundRule::parse("http://backend:8080").unwrap().service(), None);
        assert_eq!(OutboundRule::parse("*").unwrap().service(), None);
        let m = Manifest::parse("outbound = [\"service:backend\", \"service:db-2\"]").unwrap();
        let services: Vec<_> =
            m.outbound_rules().iter().filter_map(|r| r.service().map(str::to_owned)).collect();
        assert_eq!(services, ["backend", "db-2"]);
    }

    #[test]
    fn a_rule_names_an_address_by_its_literal_or_localhost_for_loopback() {
        let names = |rule: &str, scheme: &str, ip: &str, port: u16| {
            OutboundRule::parse(rule).unwrap().names_address(scheme, ip.parse().unwrap(), port)
        };
        assert!(names("http://127.0.0.1:8080", "http", "127.0.0.1", 8080));
        assert!(!names("http://127.0.0.1:8080", "http", "127.0.0.1", 8081), "the port counts");
        assert!(!names("http://127.0.0.1:8080", "https", "127.0.0.1", 8080), "the scheme counts");
        assert!(!names("http://127.0.0.1:*", "http", "127.0.0.2", 80), "one address, not its network");
        assert!(names("http://127.0.0.1:*", "http", "::ffff:127.0.0.1", 80), "v4-mapped is the same address");
        assert!(names("http://[::1]:*", "http", "::1", 80));
        assert!(names("localhost:*", "http", "127.0.0.1", 9000));
        assert!(names("localhost:*", "http", "::1", 9000));
        assert!(!names("localhost:*", "http", "192.168.1.5", 9000), "localhost names loopback only");
        assert!(!names("*", "http", "127.0.0.1", 80), "a wildcard names nothing");
        assert!(!names("*.example.com", "https", "127.0.0.1", 443));
        assert!(!names("api.example.com", "https", "127.0.0.1", 443));
    }
}
