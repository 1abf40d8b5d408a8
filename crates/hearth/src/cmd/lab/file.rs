//! The lab file: TOML, parsed strictly and checked as a whole before
//! anything is created, with errors that name the line and the field.
//!
//! ```toml
//! name = "etcd"                      # optional: default from the file's name
//!
//! [[image]]                          # built if missing
//! name = "etcd:bookworm"
//! distro = "debian"                  # the default, and the only one today
//! suite = "bookworm"                 # the default
//! packages = ["etcd-server", "etcd-client"]
//!
//! [[network]]                        # created if missing
//! name = "etcd"
//! subnet = "10.243.0.0/24"           # optional
//! nat = false                        # default true
//!
//! [[machine]]
//! name = "etcd"
//! count = 3                          # a group: etcd-1, etcd-2, etcd-3
//! image = "etcd:bookworm"
//! networks = ["etcd:10.243.0.1{index}"]   # NAME or NAME:IP; default: the `default` network
//! ports = ["237{index}:2379"]        # HOSTPORT:GUESTPORT[/udp] on the host's loopback
//! cpus = 1                           # default 1
//! memory = "512M"                    # or a number of MiB; default 512M
//! sleep_after = "5m"                 # sleep when idle, woken by the next connection
//! setup = "..."                      # sh -c, once per boot
//! ready = "..."                      # sh -c, retried until it exits 0
//! ready_timeout = 120                # seconds, the default
//! setup_timeout = 600                # seconds, the default
//! ```
//!
//! Placeholders, written `{name}`: in `networks` and `ports`, `{name}`,
//! `{index}`, `{group}` and `{lab}`; in `setup` and `ready` also `{ip}`,
//! `{network}`, `{group_names}` and `{group_ips}` (see [`PLACEHOLDERS`]).
//! Shell's own `${VAR}` is left alone, and so are braces around anything
//! that is not a lowercase name (`{ print $1 }`, `{a,b}`).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use hearth_client::types::NetworkAttachment;
use hearth_net::record::Subnet;
use hearth_net::service::PortSpec;
use serde::Deserialize;
use toml::Spanned;

/// Seconds a machine gets to pass its `ready` check, by default.
pub(crate) const DEFAULT_READY_TIMEOUT: u64 = 120;
/// Seconds a machine's `setup` may run, by default.
pub(crate) const DEFAULT_SETUP_TIMEOUT: u64 = 600;
/// The largest group.
const MAX_COUNT: i64 = 64;

/// Every placeholder `setup` and `ready` can use, with what it becomes.
pub(crate) const PLACEHOLDERS: &[(&str, &str)] = &[
    ("name", "the machine's name, e.g. etcd-2"),
    ("index", "its number in its group, from 1 (1 for a single machine)"),
    ("group", "the group's name, e.g. etcd"),
    ("lab", "the lab's name"),
    ("ip", "its address on its first network"),
    ("network", "the name of its first network"),
    ("group_names", "the names of every machine of its group, comma-separated, in order"),
    ("group_ips", "their addresses on their first network, comma-separated, in the same order"),
];

/// The placeholders known before machines have addresses: for `networks` and `ports`.
const EARLY_PLACEHOLDERS: &[&str] = &["name", "index", "group", "lab"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLab {
    name: Option<Spanned<String>>,
    #[serde(default)]
    image: Vec<RawImage>,
    #[serde(default)]
    network: Vec<RawNetwork>,
    #[serde(default)]
    machine: Vec<RawMachine>,
    #[serde(default)]
    service: Vec<RawService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    image: Spanned<String>,
    count: Option<Spanned<i64>>,
    port: Spanned<i64>,
    #[serde(default)]
    checks: Vec<Spanned<String>>,
    #[serde(default)]
    ports: Vec<Spanned<String>>,
    #[serde(default)]
    routes: Vec<Spanned<String>>,
    network: Option<Spanned<String>>,
    command: Option<Vec<String>>,
    #[serde(default)]
    env: Vec<Spanned<String>>,
    cpus: Option<Spanned<i64>>,
    memory: Option<Spanned<Memory>>,
    on_config_change: Option<Spanned<String>>,
    sleep_after: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    name: Spanned<String>,
    distro: Option<Spanned<String>>,
    suite: Option<String>,
    #[serde(default)]
    packages: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    name: Spanned<String>,
    subnet: Option<Spanned<String>>,
    nat: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    name: Spanned<String>,
    count: Option<Spanned<i64>>,
    image: Spanned<String>,
    #[serde(default)]
    networks: Vec<Spanned<String>>,
    #[serde(default)]
    ports: Vec<Spanned<String>>,
    cpus: Option<Spanned<i64>>,
    memory: Option<Spanned<Memory>>,
    backend: Option<String>,
    setup: Option<Spanned<String>>,
    ready: Option<Spanned<String>>,
    ready_timeout: Option<Spanned<i64>>,
    setup_timeout: Option<Spanned<i64>>,
    sleep_after: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Memory {
    Mib(i64),
    Text(String),
}

/// A lab, checked and expanded: one entry per machine.
#[derive(Debug, Clone)]
pub(crate) struct Lab {
    pub(crate) name: String,
    pub(crate) images: Vec<Image>,
    pub(crate) networks: Vec<Network>,
    pub(crate) machines: Vec<Machine>,
    pub(crate) services: Vec<Service>,
}

/// A `[[service]]`: hearth keeps `count` machines of it (`NAME-1`...),
/// checked and replaced; see `hearth service create`.
#[derive(Debug, Clone)]
pub(crate) struct Service {
    pub(crate) name: String,
    pub(crate) image: String,
    pub(crate) count: u32,
    pub(crate) port: u16,
    pub(crate) checks: Vec<String>,
    /// `HOST:PORT` host ports balanced over the instances.
    pub(crate) ports: Vec<String>,
    /// `HOST[/PATH]` ingress routes to the instances.
    pub(crate) routes: Vec<String>,
    pub(crate) network: Option<String>,
    pub(crate) command: Option<Vec<String>>,
    pub(crate) env: Vec<String>,
    pub(crate) cpus: u32,
    pub(crate) memory_mib: u32,
    /// What each machine does when its config changes: a signal or a command.
    pub(crate) on_config_change: Option<String>,
    /// How long each machine may be idle before it sleeps (`5m`).
    pub(crate) sleep_after: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Image {
    pub(crate) name: String,
    pub(crate) distro: String,
    pub(crate) suite: Option<String>,
    pub(crate) packages: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Network {
    pub(crate) name: String,
    pub(crate) subnet: Option<Subnet>,
    pub(crate) nat: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Machine {
    pub(crate) name: String,
    /// The `[[machine]]` entry's name: the group, or the machine itself.
    pub(crate) group: String,
    /// From 1.
    pub(crate) index: usize,
    pub(crate) image: String,
    /// Empty: the daemon's `default` network.
    pub(crate) networks: Vec<NetworkAttachment>,
    pub(crate) ports: Vec<String>,
    pub(crate) cpus: u32,
    pub(crate) memory_mib: u32,
    pub(crate) backend: Option<String>,
    /// Templates, rendered with [`Lab::vars`] once addresses are known.
    pub(crate) setup: Option<String>,
    pub(crate) ready: Option<String>,
    pub(crate) setup_timeout: Duration,
    pub(crate) ready_timeout: Duration,
    /// `--sleep-after`, as written (checked here, whole seconds from 1s).
    pub(crate) sleep_after: Option<String>,
}

impl Lab {
    /// The machines of `group`, in index order.
    pub(crate) fn group(&self, group: &str) -> impl Iterator<Item = &Machine> {
        self.machines.iter().filter(move |m| m.group == group)
    }

    /// The values of every placeholder for `machine`, given each machine's
    /// address on its first network.
    pub(crate) fn vars(
        &self,
        machine: &Machine,
        ips: &HashMap<String, String>,
    ) -> BTreeMap<&'static str, String> {
        let ip = |name: &str| ips.get(name).cloned().unwrap_or_default();
        let mut vars = early_vars(&self.name, &machine.group, &machine.name, machine.index);
        vars.insert("ip", ip(&machine.name));
        vars.insert(
            "network",
            machine.networks.first().map(|a| a.network.clone()).unwrap_or_else(|| "default".into()),
        );
        vars.insert(
            "group_names",
            self.group(&machine.group).map(|m| m.name.clone()).collect::<Vec<_>>().join(","),
        );
        vars.insert(
            "group_ips",
            self.group(&machine.group).map(|m| ip(&m.name)).collect::<Vec<_>>().join(","),
        );
        vars
    }
}

fn early_vars(lab: &str, group: &str, name: &str, index: usize) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("name", name.to_owned()),
        ("index", index.to_string()),
        ("group", group.to_owned()),
        ("lab", lab.to_owned()),
    ])
}

/// The lab's name when neither `--name` nor the file gives one: the
/// directory of a `lab.toml`, else the file's stem.
pub(crate) fn default_name(path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    if stem == "lab" {
        let dir = std::fs::canonicalize(path).ok().and_then(|p| p.parent().map(Path::to_path_buf));
        if let Some(name) = dir.as_deref().and_then(Path::file_name) {
            return name.to_string_lossy().into_owned();
        }
    }
    stem
}

/// The lab's name as `lab down FILE` needs it, without checking the rest.
pub(crate) fn name_of(path: &Path, source: &str) -> String {
    source
        .parse::<toml::Table>()
        .ok()
        .and_then(|t| t.get("name").and_then(|n| n.as_str().map(str::to_owned)))
        .unwrap_or_else(|| default_name(path))
}

/// Where in the file an error is: `FILE:LINE`.
struct Locator<'a> {
    label: &'a str,
    source: &'a str,
}

impl Locator<'_> {
    fn line(&self, offset: usize) -> usize {
        self.source[..offset.min(self.source.len())].matches('\n').count() + 1
    }

    fn at(&self, span: std::ops::Range<usize>) -> String {
        format!("{}:{}", self.label, self.line(span.start))
    }
}

/// Parses and checks a lab file. `label` names the file in errors;
/// `name` (from `--name`) wins over the file's own.
pub(crate) fn parse(
    label: &str,
    source: &str,
    name: Option<&str>,
    default_name: &str,
) -> anyhow::Result<Lab> {
    let loc = Locator { label, source };
    let raw: RawLab = toml::from_str(source).map_err(|e| {
        let Some(span) = e.span() else { return anyhow::anyhow!("{label}: {}", e.message().trim_end()) };
        // The message says what is wrong but not always which field: show the line.
        let line_start = source[..span.start].rfind('\n').map_or(0, |i| i + 1);
        let text = source[line_start..].lines().next().unwrap_or_default().trim();
        anyhow::anyhow!(
            "{label}:{}:{}: {}\n    {text}",
            loc.line(span.start),
            span.start - line_start + 1,
            e.message().trim_end()
        )
    })?;
    let mut problems = Problems::default();
    let lab_name = match (name, &raw.name) {
        (Some(name), _) => name.to_owned(),
        (None, Some(n)) => n.get_ref().clone(),
        (None, None) => default_name.to_owned(),
    };
    if let Err(e) = hearth_api::labs::validate_name(&lab_name) {
        let place = match (name, &raw.name) {
            (None, Some(n)) => format!("{}: field `name`", loc.at(n.span())),
            (Some(_), _) => "--name".to_owned(),
            (None, None) => format!("{label}: the name taken from the file name"),
        };
        problems.push(format!("{place}: {e}; set `name = \"...\"` at the top of the file or pass --name"));
    }

    let images = check_images(&loc, raw.image, &mut problems);
    let networks = check_networks(&loc, raw.network, &mut problems);
    let subnets: HashMap<&str, Subnet> =
        networks.iter().filter_map(|n| n.subnet.map(|s| (n.name.as_str(), s))).collect();
    let mut machines = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut addresses: HashMap<(String, Ipv4Addr), String> = HashMap::new();
    let mut host_ports: HashMap<(u16, bool), String> = HashMap::new();
    for raw in raw.machine {
        let group = raw.name.get_ref().clone();
        let at = loc.at(raw.name.span());
        let what = format!("{at}: machine {group:?}");
        let count = match &raw.count {
            None => None,
            Some(c) if (1..=MAX_COUNT).contains(c.get_ref()) => Some(*c.get_ref() as usize),
            Some(c) => {
                problems.push(format!(
                    "{}: machine {group:?}: field `count` is {}; a group has 1 to {MAX_COUNT} machines",
                    loc.at(c.span()),
                    c.get_ref()
                ));
                None
            }
        };
        let expanded: Vec<(String, usize)> = match count {
            None => vec![(group.clone(), 1)],
            Some(n) => (1..=n).map(|i| (format!("{group}-{i}"), i)).collect(),
        };
        if let Err(e) = hearth_machines::record::validate_name(expanded.last().map_or(&group, |(n, _)| n)) {
            problems.push(format!("{what}: field `name`: {e}"));
            continue;
        }
        if raw.image.get_ref().trim().is_empty() {
            problems.push(format!("{}: machine {group:?}: field `image` is empty", loc.at(raw.image.span())));
        }
        let cpus = match &raw.cpus {
            None => 1,
            Some(c) if (1..=64).contains(c.get_ref()) => *c.get_ref() as u32,
            Some(c) => {
                problems
                    .push(format!("{}: machine {group:?}: field `cpus` must be 1 to 64", loc.at(c.span())));
                1
            }
        };
        let memory_mib = match &raw.memory {
            None => 512,
            Some(m) => match memory_mib(m.get_ref()) {
                Ok(mib) => mib,
                Err(e) => {
                    problems.push(format!("{}: machine {group:?}: field `memory`: {e}", loc.at(m.span())));
                    512
                }
            },
        };
        let seconds =
            |field: &str, value: &Option<Spanned<i64>>, default: u64, problems: &mut Problems| match value {
                None => Duration::from_secs(default),
                Some(v) if *v.get_ref() >= 1 => Duration::from_secs(*v.get_ref() as u64),
                Some(v) => {
                    problems.push(format!(
                        "{}: machine {group:?}: field `{field}` must be at least 1 (seconds)",
                        loc.at(v.span())
                    ));
                    Duration::from_secs(default)
                }
            };
        let ready_timeout =
            seconds("ready_timeout", &raw.ready_timeout, DEFAULT_READY_TIMEOUT, &mut problems);
        let setup_timeout =
            seconds("setup_timeout", &raw.setup_timeout, DEFAULT_SETUP_TIMEOUT, &mut problems);
        if let Some(after) = &raw.sleep_after {
            check_sleep_after(&loc, &format!("machine {group:?}"), after, &mut problems);
        }
        let all: Vec<&str> = PLACEHOLDERS.iter().map(|(p, _)| *p).collect();
        for (field, template) in [("setup", &raw.setup), ("ready", &raw.ready)] {
            if let Some(t) = template
                && let Err(e) = render(t.get_ref(), |p| all.contains(&p).then(String::new))
            {
                problems.push(format!("{}: machine {group:?}: field `{field}`: {e}", loc.at(t.span())));
            }
        }
        for (name, index) in expanded {
            if let Some(first) = names.insert(name.clone(), loc.line(raw.name.span().start)) {
                problems.push(format!(
                    "{what}: the machine name {name:?} is used twice (line {first} and line {}); names must be unique",
                    loc.line(raw.name.span().start)
                ));
            }
            let vars = early_vars(&lab_name, &group, &name, index);
            let early = |p: &str| EARLY_PLACEHOLDERS.contains(&p).then(|| vars.get(p).cloned()).flatten();
            let mut attachments: Vec<NetworkAttachment> = Vec::new();
            for spec in &raw.networks {
                let place = format!("{}: machine {name:?}: field `networks`", loc.at(spec.span()));
                let text = match render(spec.get_ref(), early) {
                    Ok(text) => text,
                    Err(e) => {
                        problems.push(format!("{place}: {e} (here only {})", braces(EARLY_PLACEHOLDERS)));
                        continue;
                    }
                };
                match attachment(&text, &subnets) {
                    Ok(a) => {
                        if attachments.iter().any(|b| b.network == a.network) {
                            problems.push(format!("{place}: it joins network {:?} twice", a.network));
                        }
                        if let Some(ip) = a.ip.as_deref().and_then(|ip| ip.parse().ok())
                            && let Some(other) = addresses.insert((a.network.clone(), ip), name.clone())
                        {
                            problems.push(format!(
                                "{place}: address {ip} on {:?} is also {other:?}'s",
                                a.network
                            ));
                        }
                        attachments.push(a);
                    }
                    Err(e) => problems.push(format!("{place}: {e}")),
                }
            }
            let mut ports = Vec::new();
            for spec in &raw.ports {
                let place = format!("{}: machine {name:?}: field `ports`", loc.at(spec.span()));
                let text = match render(spec.get_ref(), early) {
                    Ok(text) => text,
                    Err(e) => {
                        problems.push(format!("{place}: {e} (here only {})", braces(EARLY_PLACEHOLDERS)));
                        continue;
                    }
                };
                match text.parse::<PortSpec>() {
                    Ok(p) => {
                        if let Some(other) = host_ports.insert((p.host, p.udp), name.clone()) {
                            problems.push(format!(
                                "{place}: host port {} is also forwarded to {other:?}",
                                p.host
                            ));
                        }
                        ports.push(p.to_string());
                    }
                    Err(e) => problems.push(format!("{place}: {e}")),
                }
            }
            machines.push(Machine {
                name,
                group: group.clone(),
                index,
                image: raw.image.get_ref().trim().to_owned(),
                networks: attachments,
                ports,
                cpus,
                memory_mib,
                backend: raw.backend.clone(),
                setup: raw.setup.as_ref().map(|s| s.get_ref().clone()),
                ready: raw.ready.as_ref().map(|s| s.get_ref().clone()),
                setup_timeout,
                ready_timeout,
                sleep_after: raw.sleep_after.as_ref().map(|s| s.get_ref().clone()),
            });
        }
    }
    let services = check_services(&loc, raw.service, &names, &mut problems);
    if machines.is_empty() && services.is_empty() && problems.is_empty() {
        problems.push(format!(
            "{label}: the lab has no machines; add a [[machine]] or a [[service]] with a name and an image"
        ));
    }
    problems.finish()?;
    Ok(Lab { name: lab_name, images, networks, machines, services })
}

fn check_services(
    loc: &Locator<'_>,
    raw: Vec<RawService>,
    machine_names: &HashMap<String, usize>,
    problems: &mut Problems,
) -> Vec<Service> {
    let mut services: Vec<Service> = Vec::new();
    for raw in raw {
        let name = raw.name.get_ref().trim().to_owned();
        let what = format!("{}: service {name:?}", loc.at(raw.name.span()));
        if let Err(e) = hearth_services::record::validate_name(&name) {
            problems.push(format!("{what}: field `name`: {e}"));
            continue;
        }
        if services.iter().any(|s| s.name == name) {
            problems.push(format!("{what}: declared twice"));
            continue;
        }
        if raw.image.get_ref().trim().is_empty() {
            problems.push(format!("{}: service {name:?}: field `image` is empty", loc.at(raw.image.span())));
        }
        let count = match &raw.count {
            None => 1,
            Some(c) if (0..=i64::from(hearth_services::MAX_COUNT)).contains(c.get_ref()) => {
                *c.get_ref() as u32
            }
            Some(c) => {
                problems.push(format!(
                    "{}: service {name:?}: field `count` is {}; give 0 to {}",
                    loc.at(c.span()),
                    c.get_ref(),
                    hearth_services::MAX_COUNT
                ));
                1
            }
        };
        for i in 1..=count {
            let machine = format!("{name}-{i}");
            if let Some(line) = machine_names.get(&machine) {
                problems.push(format!(
                    "{what}: its instance {machine:?} has the name of the machine on line {line}"
                ));
            }
        }
        let port = match u16::try_from(*raw.port.get_ref()) {
            Ok(port) if port > 0 => port,
            _ => {
                problems.push(format!(
                    "{}: service {name:?}: field `port` must be 1 to 65535",
                    loc.at(raw.port.span())
                ));
                1
            }
        };
        for check in &raw.checks {
            if let Err(e) = check.get_ref().parse::<hearth_services::check::CheckSpec>() {
                problems.push(format!("{}: service {name:?}: field `checks`: {e}", loc.at(check.span())));
            }
        }
        for p in &raw.ports {
            let text = if p.get_ref().contains(':') {
                p.get_ref().clone()
            } else {
                format!("{}:{port}", p.get_ref())
            };
            if let Err(e) = text.parse::<PortSpec>() {
                problems.push(format!("{}: service {name:?}: field `ports`: {e}", loc.at(p.span())));
            }
        }
        let mut routes = Vec::new();
        for r in &raw.routes {
            match hearth_services::record::Route::parse(r.get_ref()) {
                Ok(route) => routes.push(route),
                Err(e) => {
                    problems.push(format!("{}: service {name:?}: field `routes`: {e}", loc.at(r.span())))
                }
            }
        }
        if let Err(e) = hearth_services::record::validate_routes(&routes) {
            problems.push(format!("{what}: field `routes`: {e}"));
        }
        for kv in &raw.env {
            if !kv.get_ref().contains('=') || kv.get_ref().starts_with('=') {
                problems.push(format!(
                    "{}: service {name:?}: field `env`: {:?} is not KEY=VALUE",
                    loc.at(kv.span()),
                    kv.get_ref()
                ));
            }
        }
        if raw.command.as_ref().is_some_and(Vec::is_empty) {
            problems.push(format!("{what}: field `command` is empty; leave it out to run the image's own"));
        }
        let cpus = match &raw.cpus {
            None => 1,
            Some(c) if (1..=64).contains(c.get_ref()) => *c.get_ref() as u32,
            Some(c) => {
                problems
                    .push(format!("{}: service {name:?}: field `cpus` must be 1 to 64", loc.at(c.span())));
                1
            }
        };
        let memory_mib = match &raw.memory {
            None => 512,
            Some(m) => memory_mib(m.get_ref()).unwrap_or_else(|e| {
                problems.push(format!("{}: service {name:?}: field `memory`: {e}", loc.at(m.span())));
                512
            }),
        };
        if let Some(action) = &raw.on_config_change
            && let Err(why) = hearth_machines::record::validate_on_config_change(action.get_ref())
        {
            problems.push(format!(
                "{}: service {name:?}: field `on_config_change`: {why}",
                loc.at(action.span())
            ));
        }
        if let Some(after) = &raw.sleep_after {
            check_sleep_after(loc, &format!("service {name:?}"), after, problems);
        }
        services.push(Service {
            name,
            image: raw.image.get_ref().trim().to_owned(),
            count,
            port,
            checks: raw.checks.iter().map(|c| c.get_ref().clone()).collect(),
            ports: raw.ports.iter().map(|p| p.get_ref().clone()).collect(),
            routes: raw.routes.iter().map(|r| r.get_ref().clone()).collect(),
            network: raw.network.map(|n| n.into_inner()),
            command: raw.command,
            env: raw.env.into_iter().map(|e| e.into_inner()).collect(),
            cpus,
            memory_mib,
            on_config_change: raw.on_config_change.map(|a| a.into_inner()),
            sleep_after: raw.sleep_after.map(|a| a.into_inner()),
        });
    }
    services
}

/// `sleep_after`: a duration of whole seconds, at least one.
fn check_sleep_after(loc: &Locator<'_>, what: &str, after: &Spanned<String>, problems: &mut Problems) {
    let whole = humantime::parse_duration(after.get_ref()).map_err(|e| e.to_string()).and_then(|d| {
        match d.as_secs() >= 1 && d.subsec_nanos() == 0 {
            true => Ok(d),
            false => Err("not a whole number of seconds, at least one".to_owned()),
        }
    });
    if let Err(e) = whole {
        problems.push(format!(
            "{}: {what}: field `sleep_after`: {:?}: {e} (e.g. \"30s\", \"5m\")",
            loc.at(after.span()),
            after.get_ref()
        ));
    }
}

fn check_images(loc: &Locator<'_>, raw: Vec<RawImage>, problems: &mut Problems) -> Vec<Image> {
    let mut images: Vec<Image> = Vec::new();
    for image in raw {
        let name = image.name.get_ref().trim().to_owned();
        let at = loc.at(image.name.span());
        if name.is_empty() {
            problems.push(format!("{at}: image: field `name` is empty"));
            continue;
        }
        if images.iter().any(|i| i.name == name) {
            problems.push(format!("{at}: image {name:?} is declared twice"));
            continue;
        }
        let distro = image.distro.as_ref().map_or("debian", |d| d.get_ref().as_str()).to_owned();
        if distro != "debian" {
            let at = image.distro.as_ref().map_or(at.clone(), |d| loc.at(d.span()));
            problems.push(format!(
                "{at}: image {name:?}: field `distro` is {distro:?}; only \"debian\" can be built"
            ));
        }
        images.push(Image { name, distro, suite: image.suite, packages: image.packages });
    }
    images
}

fn check_networks(loc: &Locator<'_>, raw: Vec<RawNetwork>, problems: &mut Problems) -> Vec<Network> {
    let mut networks: Vec<Network> = Vec::new();
    for network in raw {
        let name = network.name.get_ref().clone();
        let at = loc.at(network.name.span());
        if let Err(e) = hearth_net::record::validate_name(&name) {
            problems.push(format!("{at}: network: field `name`: {e}"));
            continue;
        }
        if networks.iter().any(|n| n.name == name) {
            problems.push(format!("{at}: network {name:?} is declared twice"));
            continue;
        }
        let subnet = match &network.subnet {
            None => None,
            Some(s) => match s.get_ref().parse::<Subnet>() {
                Ok(subnet) => {
                    if let Some(other) =
                        networks.iter().find(|n| n.subnet.is_some_and(|o| o.overlaps(&subnet)))
                    {
                        problems.push(format!(
                            "{}: network {name:?}: subnet {subnet} overlaps network {:?}'s",
                            loc.at(s.span()),
                            other.name
                        ));
                    }
                    Some(subnet)
                }
                Err(e) => {
                    problems.push(format!("{}: network {name:?}: field `subnet`: {e}", loc.at(s.span())));
                    None
                }
            },
        };
        networks.push(Network { name, subnet, nat: network.nat.unwrap_or(true) });
    }
    networks
}

/// `NAME` or `NAME:IP`, checked against the subnet when the lab declares it.
fn attachment(text: &str, subnets: &HashMap<&str, Subnet>) -> Result<NetworkAttachment, String> {
    let (network, ip) = match text.split_once(':') {
        Some((network, ip)) => (network, Some(ip)),
        None => (text, None),
    };
    hearth_net::record::validate_name(network)?;
    let Some(ip) = ip else { return Ok(NetworkAttachment { network: network.to_owned(), ip: None }) };
    let addr: Ipv4Addr =
        ip.parse().map_err(|_| format!("{ip:?} is not an IPv4 address (write NAME:10.0.0.5)"))?;
    if let Some(subnet) = subnets.get(network)
        && !subnet.machine_addresses().any(|a| a == addr)
    {
        return Err(format!(
            "{addr} is not a machine address in network {network:?} ({subnet}: from {} to {})",
            Ipv4Addr::from(u32::from(subnet.network) + 2),
            Ipv4Addr::from(u32::from(subnet.broadcast()).saturating_sub(1)),
        ));
    }
    Ok(NetworkAttachment { network: network.to_owned(), ip: Some(addr.to_string()) })
}

fn memory_mib(memory: &Memory) -> Result<u32, String> {
    let mib = match memory {
        Memory::Mib(n) => *n as f64,
        Memory::Text(text) => {
            let t = text.trim();
            let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
            let n: f64 =
                t[..split].trim().parse().map_err(|_| format!("{text:?} is not a size like 512M or 2G"))?;
            match t[split..].to_ascii_lowercase().as_str() {
                "" | "m" | "mb" | "mib" => n,
                "g" | "gb" | "gib" => n * 1024.0,
                _ => return Err(format!("{text:?} is not a size like 512M or 2G")),
            }
        }
    };
    if !(64.0..=1_048_576.0).contains(&mib) {
        return Err(format!("{mib} MiB is out of range (64M to 1024G)"));
    }
    Ok(mib as u32)
}

fn braces(names: &[&str]) -> String {
    names.iter().map(|n| format!("{{{n}}}")).collect::<Vec<_>>().join(", ")
}

/// Replaces each `{placeholder}` with its value. `${...}` (the shell's) and
/// braces around anything that is not a lowercase name are left as they are;
/// a lowercase name that is not a placeholder is an error, so that typos do
/// not pass silently.
pub(crate) fn render(template: &str, value: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let (before, after) = rest.split_at(open);
        out.push_str(before);
        let after = &after[1..];
        let inner = after.find('}').map(|close| &after[..close]);
        match inner {
            Some(name) if !before.ends_with('$') && is_placeholder_like(name) => {
                let Some(v) = value(name) else {
                    let known: Vec<&str> = PLACEHOLDERS.iter().map(|(p, _)| *p).collect();
                    return Err(format!(
                        "unknown placeholder {{{name}}}; the placeholders are {} (for literal braces, put a space inside: {{ {name} }})",
                        braces(&known)
                    ));
                };
                out.push_str(&v);
                rest = &after[name.len() + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_placeholder_like(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Problems found while checking, reported together.
#[derive(Debug, Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, problem: String) {
        self.0.push(problem);
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn finish(self) -> anyhow::Result<()> {
        match self.0.len() {
            0 => Ok(()),
            1 => bail!("{}", self.0[0]),
            n => bail!("the lab file has {n} problems:\n  {}", self.0.join("\n  ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "demo"

[[image]]
name = "etcd:bookworm"
packages = ["etcd-server"]

[[network]]
name = "net"
subnet = "10.244.0.0/24"
nat = false

[[machine]]
name = "node"
count = 2
image = "etcd:bookworm"
networks = ["net:10.244.0.1{index}"]
ports = ["800{index}:80"]
memory = "1G"
setup = "echo {name} {ip} {group_names} {group_ips} ${HOME} | awk '{ print $1 }'"
ready = "test -e /tmp/{name}"

[[machine]]
name = "solo"
image = "debian:bookworm"
"#;

    fn problem(source: &str) -> String {
        format!("{:#}", parse("lab.toml", source, None, "lab").expect_err("a problem"))
    }

    fn check(source: &str, expect: &[&str]) {
        let error = problem(source);
        for e in expect {
            assert!(error.contains(e), "{error:?} lacks {e:?}");
        }
    }

    #[test]
    fn a_good_lab_expands_groups_and_placeholders() {
        let lab = parse("lab.toml", GOOD, None, "x").expect("parses");
        assert_eq!(lab.name, "demo");
        let names: Vec<&str> = lab.machines.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["node-1", "node-2", "solo"]);
        let node2 = &lab.machines[1];
        assert_eq!(node2.networks[0].ip.as_deref(), Some("10.244.0.12"));
        assert_eq!(node2.ports, ["8002:80"]);
        assert_eq!(node2.memory_mib, 1024);
        assert_eq!(node2.ready_timeout, Duration::from_secs(DEFAULT_READY_TIMEOUT));
        let ips = HashMap::from([
            ("node-1".to_owned(), "10.244.0.11".to_owned()),
            ("node-2".to_owned(), "10.244.0.12".to_owned()),
        ]);
        let vars = lab.vars(node2, &ips);
        let setup =
            render(node2.setup.as_deref().unwrap_or_default(), |p| vars.get(p).cloned()).expect("renders");
        assert_eq!(
            setup,
            "echo node-2 10.244.0.12 node-1,node-2 10.244.0.11,10.244.0.12 ${HOME} | awk '{ print $1 }'"
        );
        let solo = &lab.machines[2];
        assert_eq!((solo.index, solo.networks.len(), solo.memory_mib), (1, 0, 512));
        assert_eq!(lab.vars(solo, &ips)["network"], "default");
        assert_eq!(parse("x.toml", GOOD, Some("other"), "x").expect("parses").name, "other");
    }

    #[test]
    fn a_machine_may_sleep_after_a_whole_number_of_seconds() {
        let lab = "[[machine]]\nname = \"m\"\nimage = \"i\"\nsleep_after = \"5m\"\n";
        let lab = parse("lab.toml", lab, None, "x").expect("parses");
        assert_eq!(lab.machines[0].sleep_after.as_deref(), Some("5m"));
        check(
            "[[machine]]\nname = \"m\"\nimage = \"i\"\nsleep_after = \"500ms\"\n",
            &["lab.toml:4", "field `sleep_after`", "at least one"],
        );
        check("[[machine]]\nname = \"m\"\nimage = \"i\"\nsleep_after = \"soon\"\n", &["field `sleep_after`"]);
    }

    #[test]
    fn a_service_is_read_with_its_defaults_and_checked() {
        let source = "[[service]]\nname = \"web\"\nimage = \"i\"\nport = 80\nchecks = [\"http:/\"]\ncommand = [\"sh\", \"-c\", \"x\"]\n";
        let lab = parse("lab.toml", source, None, "x").expect("a lab of one service");
        let web = &lab.services[0];
        assert_eq!(
            (web.name.as_str(), web.count, web.port, web.cpus, web.memory_mib),
            ("web", 1, 80, 1, 512)
        );
        assert_eq!(web.command.as_deref(), Some(&["sh".to_string(), "-c".into(), "x".into()][..]));
        assert!(lab.machines.is_empty());

        let svc = |extra: &str| format!("[[service]]\nname = \"web\"\nimage = \"i\"\nport = 80\n{extra}");
        check(&svc("checks = [\"ping\"]\n"), &["lab.toml:5", "field `checks`", "is not a check"]);
        check(&svc("count = 65\n"), &["lab.toml:5", "field `count` is 65"]);
        check(&svc("env = [\"NOEQUALS\"]\n"), &["lab.toml:5", "not KEY=VALUE"]);
        check(&svc("routes = [\"shop.test/a?b\"]\n"), &["lab.toml:5", "field `routes`", "plain prefix"]);
        check(&svc("routes = [\"shop.test\", \"SHOP.test/\"]\n"), &["field `routes`", "given twice"]);
        check(&svc("on_config_change = \"SIGHPU\"\n"), &["lab.toml:5", "field `on_config_change`", "SIGHPU"]);
        check(&svc("sleep_after = \"0s\"\n"), &["lab.toml:5", "service \"web\": field `sleep_after`"]);
        let sleeps = parse("lab.toml", &svc("sleep_after = \"5m\"\n"), None, "x").expect("parses");
        assert_eq!(sleeps.services[0].sleep_after.as_deref(), Some("5m"));
        let reloads = parse("lab.toml", &svc("on_config_change = \"SIGHUP\"\n"), None, "x").expect("parses");
        assert_eq!(reloads.services[0].on_config_change.as_deref(), Some("SIGHUP"));
        let routed = parse("lab.toml", &svc("routes = [\"shop.test/api\"]\n"), None, "x").expect("parses");
        assert_eq!(routed.services[0].routes, ["shop.test/api"]);
        check("[[service]]\nname = \"web\"\nimage = \"i\"\nport = 0\n", &["lab.toml:4", "field `port`"]);
        check(
            &format!("{}[[service]]\nname = \"web\"\nimage = \"i\"\nport = 1\n", svc("")),
            &["declared twice"],
        );
        check(
            &format!("{}[[machine]]\nname = \"web-1\"\nimage = \"i\"\n", svc("")),
            &["service \"web\"", "has the name of the machine"],
        );
    }

    #[test]
    fn bad_lab_files_name_the_line_and_the_field() {
        check("[[machine]]\nname = \"a\"\nimgae = \"x\"\n", &["lab.toml:3:1", "unknown field `imgae`"]);
        check("[[machine]]\nname = \"a\"\n", &["lab.toml:1", "missing field `image`"]);
        check("[[machine]]\nname = \"a\"\nimage = \"i\"\ncount = 0\n", &["lab.toml:4", "field `count` is 0"]);
        check(
            "[[machine]]\nname = \"a\"\nimage = \"i\"\ncount = \"3\"\n",
            &["lab.toml:4:9", "expected i64\n    count = \"3\""],
        );
        check(
            "[[machine]]\nname = \"a\"\nimage = \"i\"\ncount = 2\n\n[[machine]]\nname = \"a-2\"\nimage = \"i\"\n",
            &["lab.toml:7", "\"a-2\" is used twice (line 2 and line 7)"],
        );
        check("[[machine]]\nname = \"A\"\nimage = \"i\"\n", &["lab.toml:2", "field `name`", "not valid"]);
        check(
            "[[machine]]\nname = \"a\"\nimage = \"i\"\nsetup = \"echo {nmae}\"\n",
            &["lab.toml:4", "unknown placeholder {nmae}"],
        );
        check(
            "[[machine]]\nname = \"a\"\nimage = \"i\"\nnetworks = [\"n:{ip}\"]\n",
            &["field `networks`", "{ip}"],
        );
        check(
            "[[network]]\nname = \"n\"\nsubnet = \"10.9.0.0/24\"\n[[machine]]\nname = \"a\"\nimage = \"i\"\nnetworks = [\"n:10.8.0.5\"]\n",
            &["lab.toml:7", "not a machine address in network \"n\""],
        );
        check(
            "[[machine]]\nname = \"a\"\nimage = \"i\"\nports = [\"80:80\"]\n[[machine]]\nname = \"b\"\nimage = \"i\"\nports = [\"80:81\"]\n",
            &["host port 80 is also forwarded to \"a\""],
        );
        check(
            "[[network]]\nname = \"n\"\n[[network]]\nname = \"n\"\n[[machine]]\nname = \"a\"\nimage = \"i\"\n",
            &["lab.toml:4", "declared twice"],
        );
        check("name = \"a\"\n", &["no machines"]);
        check("[[machine]]\nname = \"a\"\nimage = \"i\"\nmemory = \"lots\"\n", &["field `memory`"]);
        // Several problems are reported together.
        check(
            "[[machine]]\nname = \"a\"\nimage = \"i\"\ncount = 99\n[[machine]]\nname = \"b\"\nimage = \"\"\n",
            &["2 problems", "count", "`image` is empty"],
        );
        check("[[machine]\n", &["lab.toml:1"]);
    }

    #[test]
    fn placeholders_leave_shell_and_awk_braces_alone() {
        let value = |p: &str| (p == "name").then(|| "n1".to_owned());
        assert_eq!(
            render("${name} {name} {a,b} { print } {", value).expect("ok"),
            "${name} n1 {a,b} { print } {"
        );
        assert!(render("{index}", value).expect_err("unknown").contains("{index}"));
    }

    #[test]
    fn names_come_from_the_file_or_its_directory() {
        assert_eq!(default_name(Path::new("/tmp/raft.toml")), "raft");
        assert_eq!(name_of(Path::new("x.toml"), "name = \"etcd\"\n"), "etcd");
        assert_eq!(name_of(Path::new("x.toml"), "not toml ["), "x");
    }
}
