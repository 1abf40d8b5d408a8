//! The agent's configuration, from the kernel command line.
//!
//! | parameter | meaning |
//! |---|---|
//! | `hearth.root=/dev/vda` | mount this ext4 device and switch root into it |
//! | `hearth.hostname=NAME` | the machine's hostname |
//! | `hearth.port=NAME` | the virtio-serial port to serve on (default `hearth.agent`) |
//! | `hearth.vsock=PORT` | serve on this vsock port instead (Firecracker) |
//! | `hearth.cmd=BASE64` | base64 of a JSON array: a main process to start after boot, run once as root |
//! | `hearth.main=BASE64` | base64 of a JSON [`MainSpec`]: the main process, with its environment, directory, user and restart policy (see [`encode_main`]) |
//! | `hearth.net=IFACE,ADDR/PREFIX[,GATEWAY]` | give an interface an IPv4 address; repeatable, one per interface |
//! | `hearth.dns=IP[,IP]` | nameservers for `/etc/resolv.conf`; repeats add to the list |
//! | `hearth.search=DOMAIN[,DOMAIN]` | search domains for `/etc/resolv.conf`; repeats add to the list |
//! | `hearth.hosts=BASE64` | base64 of extra `/etc/hosts` lines (see [`encode_hosts`]); repeats add to them |
//! | `hearth.config=1` | the host pushes the machine's config: hold the main process until the first one is in place (see [`crate::config`]) |
//! | `hearth.config_reload=BASE64` | base64 of the reload action after a config change: a signal name (`SIGHUP`) or a `/bin/sh -c` command (see [`encode_reload`]) |
//!
//! In `hearth.net`, IFACE is an interface name (`eth0`) or, better, a MAC
//! address (`52:54:00:12:34:56`): virtio-net interfaces are numbered in PCI
//! order, which the host does not control, while their MAC it does. Only the
//! first gateway that can be added becomes the default route. The host can
//! write the value with [`NetConfig`]'s `Display`.
//!
//! The whole command line is limited to 2 KiB on x86: keep `hearth.hosts`
//! for a few peers, not a directory. `hearth.main` is bounded by the host
//! to [`MAX_MAIN`] bytes (a machine whose command and environment take more
//! is refused at creation), `hearth.config_reload` to [`MAX_RELOAD`];
//! past the kernel's limit the line would be cut and the value would not
//! decode, which the agent reports on the console.
//!
//! Parameters with a dot are not passed to init by the kernel, so the agent
//! reads `/proc/cmdline` itself. A malformed parameter is reported (as a
//! [`BootConfig::problems`] line on the console) and otherwise ignored: a
//! machine with a typo still boots and can be reached.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};

use crate::config::Reload;
use crate::main_process::MainSpec;

/// The virtio-serial port name when `hearth.port` is absent.
pub const DEFAULT_PORT: &str = "hearth.agent";
/// The vsock port the host gives in `hearth.vsock` (Firecracker, which has
/// no virtio-serial): the first port above the privileged range.
pub const DEFAULT_VSOCK_PORT: u32 = 1024;

/// What the command line asks of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    pub root: Option<String>,
    pub hostname: Option<String>,
    pub port: String,
    pub vsock: Option<u32>,
    /// `hearth.main`, or `hearth.cmd` as a command run once.
    pub main: Option<MainSpec>,
    /// `hearth.net`, in order; at most one per interface.
    pub nets: Vec<NetConfig>,
    /// `hearth.dns`: nameservers, in order.
    pub dns: Vec<IpAddr>,
    /// `hearth.search`: search domains, in order.
    pub search: Vec<String>,
    /// `hearth.hosts`, decoded: extra `/etc/hosts` lines.
    pub hosts: String,
    /// `hearth.config=1`: the host pushes config; the main process waits for it.
    pub config: bool,
    /// `hearth.config_reload`: what to do after the config changed.
    pub config_reload: Option<Reload>,
    /// Parameters that were ignored, and why; one sentence each.
    pub problems: Vec<String>,
}

impl Default for BootConfig {
    fn default() -> Self {
        Self {
            root: None,
            hostname: None,
            port: DEFAULT_PORT.into(),
            vsock: None,
            main: None,
            nets: Vec::new(),
            dns: Vec::new(),
            search: Vec::new(),
            hosts: String::new(),
            config: false,
            config_reload: None,
            problems: Vec::new(),
        }
    }
}

/// Parses a kernel command line (the contents of `/proc/cmdline`).
pub fn parse(cmdline: &str) -> BootConfig {
    let mut config = BootConfig::default();
    for word in split(cmdline) {
        if word == "--" {
            break; // the rest is for init's argv
        }
        let Some(key) = word.strip_prefix("hearth.") else { continue };
        let (key, value) = match key.split_once('=') {
            Some((key, value)) => (key, value),
            None => (key, ""),
        };
        if value.is_empty() {
            config.problems.push(format!("hearth.{key} has no value; it was ignored"));
            continue;
        }
        match key {
            "root" if value.starts_with('/') => config.root = Some(value.into()),
            "root" => {
                config.problems.push(format!("hearth.root={value} is not a device path; it was ignored"))
            }
            "hostname" if value.len() <= 64 => config.hostname = Some(value.into()),
            "hostname" => {
                config.problems.push("hearth.hostname is longer than 64 bytes; it was ignored".into())
            }
            "port" => config.port = value.into(),
            "vsock" => match value.parse() {
                Ok(port) => config.vsock = Some(port),
                Err(_) => {
                    config.problems.push(format!("hearth.vsock={value} is not a port number; it was ignored"))
                }
            },
            "cmd" => match decode_cmd(value) {
                Ok(argv) => config.main = Some(MainSpec::command(argv)),
                Err(why) => config.problems.push(format!("hearth.cmd {why}; it was ignored")),
            },
            "main" => match decode_main(value) {
                Ok(spec) => config.main = Some(spec),
                Err(why) => config.problems.push(format!("hearth.main {why}; it was ignored")),
            },
            "net" => match parse_net(value) {
                Ok(net) if config.nets.iter().any(|other| other.interface == net.interface) => {
                    config.problems.push(format!(
                        "hearth.net={value} names {} a second time; it was ignored",
                        net.interface
                    ))
                }
                Ok(net) => config.nets.push(net),
                Err(NetError::Gateway(net, why)) => {
                    config.problems.push(format!("hearth.net={value} {why}; the gateway was ignored"));
                    config.nets.push(net);
                }
                Err(NetError::Malformed(why)) => {
                    config.problems.push(format!("hearth.net={value} {why}; it was ignored"))
                }
            },
            "dns" => match parse_list(value, |ip| ip.parse::<IpAddr>().ok(), "an IP address") {
                Ok(ips) => config.dns.extend(ips),
                Err(why) => config.problems.push(format!("hearth.dns={value} {why}; it was ignored")),
            },
            "search" => match parse_list(value, |d| is_domain(d).then(|| d.to_string()), "a domain name") {
                Ok(domains) => config.search.extend(domains),
                Err(why) => config.problems.push(format!("hearth.search={value} {why}; it was ignored")),
            },
            "hosts" => match decode_hosts(value) {
                Ok(text) => {
                    config.hosts.push_str(&text);
                    if !config.hosts.is_empty() && !config.hosts.ends_with('\n') {
                        config.hosts.push('\n');
                    }
                }
                Err(why) => config.problems.push(format!("hearth.hosts {why}; it was ignored")),
            },
            "config" => match value {
                "1" => config.config = true,
                "0" => config.config = false,
                _ => config.problems.push(format!("hearth.config={value} is not 0 or 1; it was ignored")),
            },
            "config_reload" => match decode_reload(value) {
                Ok(reload) => config.config_reload = Some(reload),
                Err(why) => config.problems.push(format!("hearth.config_reload {why}; it was ignored")),
            },
            _ => config.problems.push(format!("hearth.{key} is not a known parameter; it was ignored")),
        }
    }
    config
}

/// Encodes an entrypoint for `hearth.cmd=`: base64 of a JSON array of strings.
pub fn encode_cmd<S: AsRef<str>>(argv: &[S]) -> String {
    let argv: Vec<&str> = argv.iter().map(AsRef::as_ref).collect();
    general_purpose::STANDARD.encode(serde_json::to_string(&argv).unwrap_or_default())
}

/// Decodes an entrypoint encoded by [`encode_cmd`]; the error completes a
/// sentence whose subject is the parameter ("is not base64").
pub fn decode_cmd(value: &str) -> Result<Vec<String>, String> {
    let json = decode_base64(value).ok_or_else(|| "is not base64".to_string())?;
    let argv: Vec<String> =
        serde_json::from_slice(&json).map_err(|e| format!("is not a JSON array of strings ({e})"))?;
    if argv.is_empty() {
        return Err("is an empty command".into());
    }
    Ok(argv)
}

/// The most bytes `hearth.main`'s value may take: about half of x86's
/// 2 KiB command line, leaving room for the root, the network and hosts.
pub const MAX_MAIN: usize = 1024;

/// Encodes a main process for `hearth.main=`: base64 of its JSON.
pub fn encode_main(spec: &MainSpec) -> String {
    general_purpose::STANDARD.encode(serde_json::to_string(spec).unwrap_or_default())
}

/// Decodes a main process encoded by [`encode_main`]; the error completes a
/// sentence like [`decode_cmd`]'s.
pub fn decode_main(value: &str) -> Result<MainSpec, String> {
    let json = decode_base64(value).ok_or_else(|| "is not base64".to_string())?;
    let spec: MainSpec =
        serde_json::from_slice(&json).map_err(|e| format!("is not a main process's JSON ({e})"))?;
    if spec.argv.is_empty() {
        return Err("is an empty command".into());
    }
    Ok(spec)
}

/// The most bytes `hearth.config_reload`'s value may take: a command of
/// about 380 bytes; a longer one belongs in a script in the image.
pub const MAX_RELOAD: usize = 512;

/// Encodes a reload action for `hearth.config_reload=`: base64 of its text
/// (see [`Reload::parse`]), which keeps spaces and quotes off the line.
pub fn encode_reload(reload: &Reload) -> String {
    general_purpose::STANDARD.encode(reload.as_text())
}

/// Decodes a reload action encoded by [`encode_reload`]; the error
/// completes a sentence like [`decode_cmd`]'s.
pub fn decode_reload(value: &str) -> Result<Reload, String> {
    let bytes = decode_base64(value).ok_or_else(|| "is not base64".to_string())?;
    let text = String::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_string())?;
    Reload::parse(&text).map_err(|why| format!("is not a reload action ({why})"))
}

/// Encodes extra `/etc/hosts` lines for `hearth.hosts=` (e.g.
/// `"10.200.0.6 db-1\n"`): base64, which keeps spaces and newlines off the
/// command line.
pub fn encode_hosts(text: &str) -> String {
    general_purpose::STANDARD.encode(text)
}

/// Decodes `hearth.hosts`; the error completes a sentence like
/// [`decode_cmd`]'s.
pub fn decode_hosts(value: &str) -> Result<String, String> {
    let bytes = decode_base64(value).ok_or_else(|| "is not base64".to_string())?;
    let text = String::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_string())?;
    if text.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    Ok(text)
}

/// Padded or not, in the standard or the URL-safe alphabet: whatever a
/// person or a script is likely to have written.
fn decode_base64(value: &str) -> Option<Vec<u8>> {
    const LENIENT: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const ENGINES: [GeneralPurpose; 2] = [
        GeneralPurpose::new(&base64::alphabet::STANDARD, LENIENT),
        GeneralPurpose::new(&base64::alphabet::URL_SAFE, LENIENT),
    ];
    ENGINES.iter().find_map(|engine| engine.decode(value).ok())
}

/// One `hearth.net`: an interface and the IPv4 configuration it gets.
///
/// `Display` writes the parameter's value, so the host can build the
/// command line with `format!("hearth.net={net}")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub interface: Interface,
    pub address: Ipv4Addr,
    /// The prefix length, 0 to 32.
    pub prefix: u8,
    /// On-link (inside `address/prefix`); the default route goes through it.
    pub gateway: Option<Ipv4Addr>,
}

impl NetConfig {
    /// The netmask for [`prefix`](Self::prefix): `/24` is `255.255.255.0`.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0))
    }

    /// Whether `ip` is inside this interface's subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::from(self.netmask());
        u32::from(ip) & mask == u32::from(self.address) & mask
    }
}

impl fmt::Display for NetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}/{}", self.interface, self.address, self.prefix)?;
        match self.gateway {
            Some(gateway) => write!(f, ",{gateway}"),
            None => Ok(()),
        }
    }
}

/// How `hearth.net` names its interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interface {
    /// By its kernel name, such as `eth0`.
    Name(String),
    /// By its hardware address, whatever the kernel named it.
    Mac(MacAddr),
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) => f.write_str(name),
            Self::Mac(mac) => mac.fmt(f),
        }
    }
}

/// An Ethernet address; written and parsed as `52:54:00:12:34:56`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = String;

    /// Six pairs of hex digits separated by colons, in either case.
    fn from_str(s: &str) -> Result<Self, String> {
        let not_a_mac = || format!("{s} is not a MAC address");
        let mut bytes = [0; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().filter(|p| p.len() == 2).ok_or_else(not_a_mac)?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| not_a_mac())?;
        }
        match parts.next() {
            Some(_) => Err(not_a_mac()),
            None => Ok(Self(bytes)),
        }
    }
}

/// Why a `hearth.net` value was not taken as it is; each message completes
/// a sentence whose subject is the parameter.
enum NetError {
    /// Unusable: nothing is configured.
    Malformed(String),
    /// Usable without its gateway.
    Gateway(NetConfig, String),
}

fn parse_net(value: &str) -> Result<NetConfig, NetError> {
    let malformed = |why: String| NetError::Malformed(why);
    let fields: Vec<&str> = value.split(',').collect();
    let (iface, cidr, gateway) = match fields[..] {
        [iface, cidr] => (iface, cidr, None),
        [iface, cidr, gateway] => (iface, cidr, Some(gateway)),
        _ => return Err(malformed("is not IFACE,ADDR/PREFIX[,GATEWAY]".into())),
    };
    // Interface names cannot contain a colon, so a colon means a MAC.
    let interface = if iface.contains(':') {
        Interface::Mac(
            iface.parse().map_err(|_| malformed(format!("has {iface}, which is not a MAC address")))?,
        )
    } else if is_interface_name(iface) {
        Interface::Name(iface.into())
    } else {
        return Err(malformed(format!("has {iface:?}, which is not an interface name")));
    };
    let (address, prefix) =
        cidr.split_once('/').ok_or_else(|| malformed(format!("has {cidr}, which lacks a /PREFIX")))?;
    let address: Ipv4Addr =
        address.parse().map_err(|_| malformed(format!("has {address}, which is not an IPv4 address")))?;
    let prefix = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| malformed(format!("has /{prefix}, which is not a prefix length (0 to 32)")))?;
    let mut net = NetConfig { interface, address, prefix, gateway: None };
    let Some(gateway) = gateway else { return Ok(net) };
    let gateway: Ipv4Addr = gateway
        .parse()
        .map_err(|_| malformed(format!("has the gateway {gateway}, which is not an IPv4 address")))?;
    // The kernel only routes through a gateway it can reach on the link.
    if !net.contains(gateway) || gateway == address {
        let subnet = Ipv4Addr::from(u32::from(address) & u32::from(net.netmask()));
        let why = if gateway == address {
            "has its own address as the gateway".to_string()
        } else {
            format!("has the gateway {gateway}, which is outside {subnet}/{prefix}")
        };
        return Err(NetError::Gateway(net, why));
    }
    net.gateway = Some(gateway);
    Ok(net)
}

/// What Linux accepts as a name (`dev_valid_name`), which `eth0` is and
/// `../x` is not.
fn is_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control())
}

/// Letters, digits, `-` and `_` in dot-separated labels of 1 to 63 bytes.
fn is_domain(domain: &str) -> bool {
    domain.len() <= 253
        && domain.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Parses a comma-separated list, all or nothing; the error names the first
/// bad item (`what` is "an IP address").
fn parse_list<T>(value: &str, parse: impl Fn(&str) -> Option<T>, what: &str) -> Result<Vec<T>, String> {
    value
        .split(',')
        .map(|item| parse(item).ok_or_else(|| format!("has {item:?}, which is not {what}")))
        .collect()
}

/// Splits like the kernel does: on whitespace outside double quotes, which
/// are removed.
fn split(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders what differs from the default, one `key=value` per item.
    fn render(config: &BootConfig) -> String {
        let mut parts = Vec::new();
        if let Some(root) = &config.root {
            parts.push(format!("root={root}"));
        }
        if let Some(hostname) = &config.hostname {
            parts.push(format!("hostname={hostname}"));
        }
        if config.port != DEFAULT_PORT {
            parts.push(format!("port={}", config.port));
        }
        if let Some(vsock) = config.vsock {
            parts.push(format!("vsock={vsock}"));
        }
        if let Some(main) = &config.main {
            parts.push(format!("cmd={:?}", main.argv));
            if main != &MainSpec::command(main.argv.clone()) {
                parts.push(format!(
                    "main(env={:?} workdir={:?} user={:?} restart={})",
                    main.env, main.workdir, main.user, main.restart
                ));
            }
        }
        for net in &config.nets {
            let by = match net.interface {
                Interface::Name(_) => "name",
                Interface::Mac(_) => "mac",
            };
            parts.push(format!("net=({by}) {net}"));
        }
        if !config.dns.is_empty() {
            parts.push(format!("dns={:?}", config.dns));
        }
        if !config.search.is_empty() {
            parts.push(format!("search={:?}", config.search));
        }
        if !config.hosts.is_empty() {
            parts.push(format!("hosts={:?}", config.hosts));
        }
        if config.config {
            parts.push("config".into());
        }
        if let Some(reload) = &config.config_reload {
            parts.push(format!("reload={reload:?}"));
        }
        parts.extend(config.problems.iter().map(|p| format!("problem: {p}")));
        parts.join(" | ")
    }

    fn check(cmdline: &str, expect: &str) {
        assert_eq!(render(&parse(cmdline)), expect, "parsing {cmdline:?}");
    }

    #[test]
    fn parses_the_hearth_parameters() {
        check("", "");
        check("console=ttyS0 quiet panic=-1", "");
        check("console=ttyS0 hearth.root=/dev/vda hearth.hostname=web-1", "root=/dev/vda | hostname=web-1");
        check("hearth.port=agent0", "port=agent0");
        check("hearth.vsock=1024", "vsock=1024");
        check("  hearth.hostname=a\thearth.hostname=b\n", "hostname=b");
        check("hearth.root=/dev/vda -- hearth.hostname=for-init", "root=/dev/vda");
        check("hearth.hostname=\"quoted\" other", "hostname=quoted");
    }

    #[test]
    fn decodes_the_entrypoint() {
        let cmd = encode_cmd(&["sh", "-c", "echo \"hi there\" && sleep 1"]);
        check(&format!("hearth.cmd={cmd}"), r#"cmd=["sh", "-c", "echo \"hi there\" && sleep 1"]"#);
        // Unpadded, and the URL-safe alphabet, are accepted too.
        check("hearth.cmd=WyJ0cnVlIl0", r#"cmd=["true"]"#);
        check(
            &format!("hearth.cmd={}", encode_cmd(&["ä?>"]).replace('+', "-").replace('/', "_")),
            r#"cmd=["ä?>"]"#,
        );
    }

    #[test]
    fn reports_bad_parameters_and_keeps_going() {
        check("hearth.root", "problem: hearth.root has no value; it was ignored");
        check(
            "hearth.root=vda hearth.hostname=x",
            "hostname=x | problem: hearth.root=vda is not a device path; it was ignored",
        );
        check("hearth.vsock=abc", "problem: hearth.vsock=abc is not a port number; it was ignored");
        check("hearth.cmd=!!!", "problem: hearth.cmd is not base64; it was ignored");
        check(
            &format!("hearth.cmd={}", general_purpose::STANDARD.encode("{\"a\":1}")),
            "problem: hearth.cmd is not a JSON array of strings (invalid type: map, expected a sequence at line 1 column 0); it was ignored",
        );
        check("hearth.cmd=W10=", "problem: hearth.cmd is an empty command; it was ignored");
        check(
            &format!("hearth.main={}", general_purpose::STANDARD.encode("{\"argv\":[]}")),
            "problem: hearth.main is an empty command; it was ignored",
        );
        check(
            &format!(
                "hearth.main={}",
                general_purpose::STANDARD.encode("{\"argv\":[\"x\"],\"restart\":\"sometimes\"}")
            ),
            "problem: hearth.main is not a main process's JSON (unknown variant `sometimes`, expected one of `no`, `on-failure`, `always` at line 1 column 35); it was ignored",
        );
        check("hearth.colour=blue", "problem: hearth.colour is not a known parameter; it was ignored");
        check(
            &format!("hearth.hostname={}", "h".repeat(65)),
            "problem: hearth.hostname is longer than 64 bytes; it was ignored",
        );
    }

    #[test]
    fn parses_the_network() {
        check("hearth.net=eth0,10.200.0.5/24,10.200.0.1", "net=(name) eth0,10.200.0.5/24,10.200.0.1");
        check("hearth.net=eth1,192.168.7.2/30", "net=(name) eth1,192.168.7.2/30");
        check(
            "hearth.net=52:54:00:AB:cd:0F,10.200.0.5/24,10.200.0.1",
            "net=(mac) 52:54:00:ab:cd:0f,10.200.0.5/24,10.200.0.1",
        );
        check(
            "hearth.net=52:54:00:00:00:01,10.200.0.5/24,10.200.0.1 hearth.net=eth1,10.9.0.2/16,10.9.255.254",
            "net=(mac) 52:54:00:00:00:01,10.200.0.5/24,10.200.0.1 | net=(name) eth1,10.9.0.2/16,10.9.255.254",
        );
        check(
            "hearth.net=eth0,10.0.0.1/32 hearth.net=eth1,0.0.0.0/0",
            "net=(name) eth0,10.0.0.1/32 | net=(name) eth1,0.0.0.0/0",
        );
        check("hearth.dns=10.200.0.1", "dns=[10.200.0.1]");
        check("hearth.dns=10.200.0.1,fd00::1 hearth.dns=1.1.1.1", "dns=[10.200.0.1, fd00::1, 1.1.1.1]");
        check("hearth.search=lab.hearth,hearth", r#"search=["lab.hearth", "hearth"]"#);
        check(
            &format!(
                "hearth.hosts={} hearth.hosts={}",
                encode_hosts("10.200.0.6 db-1"),
                encode_hosts("10.200.0.7 cache\n")
            ),
            r#"hosts="10.200.0.6 db-1\n10.200.0.7 cache\n""#,
        );
    }

    #[test]
    fn writes_what_it_parses() {
        let nets = [
            NetConfig {
                interface: Interface::Mac(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56])),
                address: Ipv4Addr::new(10, 200, 0, 5),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 200, 0, 1)),
            },
            NetConfig {
                interface: Interface::Name("eth1".into()),
                address: Ipv4Addr::new(172, 16, 3, 4),
                prefix: 12,
                gateway: None,
            },
        ];
        let line: Vec<String> = nets.iter().map(|net| format!("hearth.net={net}")).collect();
        assert_eq!(
            line.join(" "),
            "hearth.net=52:54:00:12:34:56,10.200.0.5/24,10.200.0.1 hearth.net=eth1,172.16.3.4/12"
        );
        assert_eq!(parse(&line.join(" ")).nets, nets);
        assert_eq!(nets[0].netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(nets[1].netmask(), Ipv4Addr::new(255, 240, 0, 0));
    }

    #[test]
    fn a_main_process_round_trips_with_its_environment_user_and_policy() {
        use crate::main_process::RestartPolicy;
        let spec = MainSpec {
            argv: vec!["sh".into(), "-c".into(), "echo \"$FOO\"".into()],
            env: vec!["FOO=a b".into()],
            workdir: Some("/srv".into()),
            user: Some("nobody:nogroup".into()),
            restart: RestartPolicy::OnFailure,
        };
        let value = encode_main(&spec);
        assert!(!value.contains(' '), "one word on the command line: {value}");
        assert_eq!(parse(&format!("quiet hearth.main={value} ro")).main, Some(spec));
    }

    #[test]
    fn the_config_feed_and_its_reload_action_round_trip() {
        use crate::config::Reload;
        check("hearth.config=1", "config");
        check("hearth.config=1 hearth.config=0", "");
        let command = Reload::Command("nginx -s reload && echo \"it's done\"".into());
        let value = encode_reload(&command);
        assert!(!value.contains(' ') && !value.contains('"'), "one word on the command line: {value}");
        assert_eq!(
            parse(&format!("hearth.config=1 hearth.config_reload={value}")).config_reload,
            Some(command)
        );
        check(
            &format!(
                "hearth.config_reload={}",
                encode_reload(&Reload::Signal(nix::sys::signal::Signal::SIGHUP))
            ),
            "reload=Signal(SIGHUP)",
        );
        check("hearth.config=yes", "problem: hearth.config=yes is not 0 or 1; it was ignored");
        check(
            &format!("hearth.config_reload={}", general_purpose::STANDARD.encode("SIGNOPE")),
            "problem: hearth.config_reload is not a reload action (SIGNOPE is not a signal name: give one such as SIGHUP, SIGUSR1 or SIGUSR2, or a command); it was ignored",
        );
        check("hearth.config_reload=!!!", "problem: hearth.config_reload is not base64; it was ignored");
    }

    #[test]
    fn reports_bad_network_parameters_and_keeps_going() {
        let ignored = |value: &str, why: &str| {
            check(
                &format!("hearth.net={value}"),
                &format!("problem: hearth.net={value} {why}; it was ignored"),
            )
        };
        ignored("eth0", "is not IFACE,ADDR/PREFIX[,GATEWAY]");
        ignored("eth0,10.0.0.1/24,10.0.0.254,x", "is not IFACE,ADDR/PREFIX[,GATEWAY]");
        ignored("52:54:00:12:34,10.0.0.1/24", "has 52:54:00:12:34, which is not a MAC address");
        ignored("52:54:00:12:34:5g,10.0.0.1/24", "has 52:54:00:12:34:5g, which is not a MAC address");
        ignored("52:54:00:12:34:56:78,10.0.0.1/24", "has 52:54:00:12:34:56:78, which is not a MAC address");
        ignored("../x,10.0.0.1/24", "has \"../x\", which is not an interface name");
        ignored(
            "averyveryverylongname,10.0.0.1/24",
            "has \"averyveryverylongname\", which is not an interface name",
        );
        ignored("eth0,10.0.0.1", "has 10.0.0.1, which lacks a /PREFIX");
        ignored("eth0,10.0.0/24", "has 10.0.0, which is not an IPv4 address");
        ignored("eth0,fd00::1/64", "has fd00::1, which is not an IPv4 address");
        ignored("eth0,10.0.0.1/33", "has /33, which is not a prefix length (0 to 32)");
        ignored("eth0,10.0.0.1/24,gw", "has the gateway gw, which is not an IPv4 address");
        check(
            "hearth.net=eth0,10.0.0.5/24,10.0.1.1",
            "net=(name) eth0,10.0.0.5/24 | problem: hearth.net=eth0,10.0.0.5/24,10.0.1.1 has the gateway 10.0.1.1, which is outside 10.0.0.0/24; the gateway was ignored",
        );
        check(
            "hearth.net=eth0,10.0.0.5/24,10.0.0.5",
            "net=(name) eth0,10.0.0.5/24 | problem: hearth.net=eth0,10.0.0.5/24,10.0.0.5 has its own address as the gateway; the gateway was ignored",
        );
        check(
            "hearth.net=eth0,10.0.0.5/24 hearth.net=eth0,10.0.0.6/24",
            "net=(name) eth0,10.0.0.5/24 | problem: hearth.net=eth0,10.0.0.6/24 names eth0 a second time; it was ignored",
        );
        check(
            "hearth.dns=10.0.0.1,10.0.0 hearth.dns=10.0.0.2",
            "dns=[10.0.0.2] | problem: hearth.dns=10.0.0.1,10.0.0 has \"10.0.0\", which is not an IP address; it was ignored",
        );
        check(
            "hearth.search=lab.hearth,bad..name",
            "problem: hearth.search=lab.hearth,bad..name has \"bad..name\", which is not a domain name; it was ignored",
        );
        check("hearth.hosts=!!!", "problem: hearth.hosts is not base64; it was ignored");
        check(
            &format!("hearth.hosts={}", general_purpose::STANDARD.encode([0xff, 0xfe])),
            "problem: hearth.hosts is not UTF-8 text; it was ignored",
        );
        check("hearth.net", "problem: hearth.net has no value; it was ignored");
    }
}
