//! The machine's network: its interfaces, `/etc/resolv.conf` and
//! `/etc/hosts`, from the `hearth.net`, `hearth.dns`, `hearth.search` and
//! `hearth.hosts` parameters.
//!
//! Interfaces are set with the ioctls of `ifconfig` and `route` (IPv4
//! address, netmask, up, default route): enough for one address per
//! interface, without a netlink library in PID 1. nix has no safe wrappers
//! for them; each `unsafe` is on the smallest item, with its `// SAFETY:`.
//!
//! The root disk persists across boots, so `/etc/hosts` gets a marked block
//! that is replaced at every boot rather than appended to again.

use std::fs;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

use crate::cmdline::{BootConfig, Interface, MacAddr, NetConfig};
use crate::{describe, say};

/// Where the kernel lists network interfaces, one directory per interface.
const SYS_CLASS_NET: &str = "/sys/class/net";
/// How long to wait, in all, for the interfaces to be probed.
const INTERFACE_WAIT: Duration = Duration::from_secs(5);
/// The lines around hearth's part of `/etc/hosts`.
const HOSTS_BEGIN: &str = "# hearth: begin (written at every boot; edits here are lost)";
const HOSTS_END: &str = "# hearth: end";
/// `/etc/hosts` when the image has none.
const DEFAULT_HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// Configures the interfaces and writes `/etc/resolv.conf` and `/etc/hosts`,
/// saying on the console what was done and what failed.
pub(crate) fn configure(config: &BootConfig) {
    let configured = configure_interfaces(&config.nets, Path::new(SYS_CLASS_NET), INTERFACE_WAIT);
    for line in &configured.lines {
        say(line);
    }
    let root = Path::new("/");
    if let Err(why) = write_resolv_conf(root, &config.dns, &config.search) {
        say(&why);
    }
    let own = configured.own_address.zip(config.hostname.as_deref());
    if let Err(why) = update_hosts(root, &hosts_block(own, &config.hosts)) {
        say(&why);
    }
}

/// What [`configure_interfaces`] did.
#[derive(Debug)]
pub(crate) struct Configured {
    /// One console line per interface: what it got, or why it got nothing.
    pub(crate) lines: Vec<String>,
    /// The first address that was set: the machine's own, for `/etc/hosts`.
    pub(crate) own_address: Option<Ipv4Addr>,
}

/// Gives each interface its address, waiting up to `wait` in all for them
/// to appear under `sys_class_net`. The first gateway that can be added
/// becomes the default route.
pub(crate) fn configure_interfaces(nets: &[NetConfig], sys_class_net: &Path, wait: Duration) -> Configured {
    let deadline = Instant::now() + wait;
    let mut configured = Configured { lines: Vec::new(), own_address: None };
    let mut default_via = None;
    for net in nets {
        let Some(name) = wait_for_interface(sys_class_net, &net.interface, deadline) else {
            let which = match &net.interface {
                Interface::Name(name) => format!("no interface {name}"),
                Interface::Mac(mac) => format!("no interface with the MAC address {mac}"),
            };
            configured.lines.push(format!(
                "cannot configure {}/{}: {which} appeared within {} s",
                net.address,
                net.prefix,
                wait.as_secs_f32()
            ));
            continue;
        };
        let cidr = format!("{}/{}", net.address, net.prefix);
        if let Err(why) = set_address(&name, net) {
            configured.lines.push(format!("cannot configure {name} as {cidr}: {why}"));
            continue;
        }
        configured.own_address.get_or_insert(net.address);
        let line = match (net.gateway, default_via) {
            (None, _) => format!("{name} {cidr}"),
            (Some(gateway), Some(default)) => {
                format!("{name} {cidr} (its gateway {gateway} is unused: the default route is via {default})")
            }
            (Some(gateway), None) => match add_default_route(&name, gateway) {
                Ok(()) => {
                    default_via = Some(gateway);
                    format!("{name} {cidr} via {gateway}")
                }
                Err(e) => {
                    format!("{name} {cidr}, but cannot add the default route via {gateway}: {}", describe(&e))
                }
            },
        };
        configured.lines.push(line);
    }
    configured
}

/// The interface's name once it exists, or `None` after `deadline`.
fn wait_for_interface(sys_class_net: &Path, wanted: &Interface, deadline: Instant) -> Option<String> {
    loop {
        if let Some(name) = find_interface(sys_class_net, wanted) {
            return Some(name);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn find_interface(sys_class_net: &Path, wanted: &Interface) -> Option<String> {
    match wanted {
        Interface::Name(name) => sys_class_net.join(name).exists().then(|| name.clone()),
        Interface::Mac(mac) => fs::read_dir(sys_class_net).ok()?.flatten().find_map(|entry| {
            let address = fs::read_to_string(entry.path().join("address")).ok()?;
            let found: MacAddr = address.trim().parse().ok()?;
            (found == *mac).then(|| entry.file_name().to_string_lossy().into_owned())
        }),
    }
}

/// `ifconfig NAME ADDR netmask MASK up`. The error completes "cannot
/// configure eth0 as 10.0.0.5/24: …".
fn set_address(name: &str, net: &NetConfig) -> Result<(), String> {
    let sock = inet_socket().map_err(|e| format!("cannot open a socket: {}", describe(&e)))?;
    let mut request = ifreq(name, libc::__c_anonymous_ifr_ifru { ifru_addr: sockaddr_v4(net.address) })?;
    ifreq_ioctl(&sock, IfreqIoctl::SetAddress, &mut request)
        .map_err(|e| format!("cannot set the address: {}", describe(&e)))?;
    let mut request = ifreq(name, libc::__c_anonymous_ifr_ifru { ifru_netmask: sockaddr_v4(net.netmask()) })?;
    ifreq_ioctl(&sock, IfreqIoctl::SetNetmask, &mut request)
        .map_err(|e| format!("cannot set the netmask: {}", describe(&e)))?;
    let up = |e: io::Error| format!("cannot bring it up: {}", describe(&e));
    let mut request = ifreq(name, libc::__c_anonymous_ifr_ifru { ifru_flags: 0 })?;
    ifreq_ioctl(&sock, IfreqIoctl::GetFlags, &mut request).map_err(up)?;
    let flags = ifreq_flags(&request) | libc::IFF_UP as libc::c_short;
    let mut request = ifreq(name, libc::__c_anonymous_ifr_ifru { ifru_flags: flags })?;
    ifreq_ioctl(&sock, IfreqIoctl::SetFlags, &mut request).map_err(up)?;
    Ok(())
}

/// `route add default gw GATEWAY dev NAME`.
fn add_default_route(name: &str, gateway: Ipv4Addr) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut dev = interface_name(name).map_err(|_| Errno::EINVAL)?;
    let mut route = zeroed_rtentry();
    route.rt_dst = sockaddr_v4(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr_v4(Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr_v4(gateway);
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    route.rt_dev = dev.as_mut_ptr();
    add_route(&sock, &route)
}

fn inet_socket() -> io::Result<OwnedFd> {
    Ok(socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?)
}

/// An `AF_INET` address with port 0, as the interface ioctls take it.
fn sockaddr_v4(ip: Ipv4Addr) -> libc::sockaddr {
    // `sockaddr_in` laid over `sockaddr`: the port, then the address, both
    // in network order.
    let mut data = [0 as libc::c_char; 14];
    for (slot, octet) in data[2..6].iter_mut().zip(ip.octets()) {
        *slot = octet as libc::c_char;
    }
    libc::sockaddr { sa_family: libc::AF_INET as libc::sa_family_t, sa_data: data }
}

/// `name` as the kernel wants it: NUL-terminated in `IFNAMSIZ` bytes.
fn interface_name(name: &str) -> Result<[libc::c_char; libc::IFNAMSIZ], String> {
    if name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(format!("{name:?} is not an interface name"));
    }
    let mut buf = [0 as libc::c_char; libc::IFNAMSIZ];
    for (slot, byte) in buf.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    Ok(buf)
}

fn ifreq(name: &str, ifru: libc::__c_anonymous_ifr_ifru) -> Result<libc::ifreq, String> {
    Ok(libc::ifreq { ifr_name: interface_name(name)?, ifr_ifru: ifru })
}

/// The interface ioctls used here: each reads or writes one `ifreq`.
#[derive(Debug, Clone, Copy)]
enum IfreqIoctl {
    SetAddress,
    SetNetmask,
    GetFlags,
    SetFlags,
}

impl IfreqIoctl {
    fn request(self) -> libc::c_ulong {
        match self {
            Self::SetAddress => libc::SIOCSIFADDR,
            Self::SetNetmask => libc::SIOCSIFNETMASK,
            Self::GetFlags => libc::SIOCGIFFLAGS,
            Self::SetFlags => libc::SIOCSIFFLAGS,
        }
    }
}

#[allow(unsafe_code)]
fn ifreq_ioctl(sock: &OwnedFd, ioctl: IfreqIoctl, request: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: every `IfreqIoctl` reads or writes one `ifreq` through the
    // pointer, which is valid and exclusive for the call; the socket is open.
    let res = unsafe { libc::ioctl(sock.as_raw_fd(), ioctl.request() as _, request as *mut libc::ifreq) };
    Errno::result(res)?;
    Ok(())
}

/// The flags of an `ifreq` filled by `SIOCGIFFLAGS`.
#[allow(unsafe_code)]
fn ifreq_flags(request: &libc::ifreq) -> libc::c_short {
    // SAFETY: every variant of the union is plain integers, and the flags
    // were written (or zeroed by us) before: any bits are a valid `c_short`.
    unsafe { request.ifr_ifru.ifru_flags }
}

/// An all-zero `rtentry`, as C callers `memset` it: the fields not set mean
/// "none" (no metric, no MTU, no window).
#[allow(unsafe_code)]
fn zeroed_rtentry() -> libc::rtentry {
    // SAFETY: `rtentry` is integers, `sockaddr`s and one raw pointer, for
    // all of which zero bytes are a valid value (the pointer is null).
    unsafe { MaybeUninit::<libc::rtentry>::zeroed().assume_init() }
}

#[allow(unsafe_code)]
fn add_route(sock: &OwnedFd, route: &libc::rtentry) -> io::Result<()> {
    // SAFETY: SIOCADDRT reads one `rtentry` through the pointer, which is
    // valid for the call, and the NUL-terminated device name `rt_dev` points
    // to, which the caller keeps alive across it; the socket is open.
    let res = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT as _, route as *const libc::rtentry) };
    Errno::result(res)?;
    Ok(())
}

/// Writes `ROOT/etc/resolv.conf` if there is anything to put in it,
/// replacing the file (or the symlink some images have there). The error is
/// a console line.
pub(crate) fn write_resolv_conf(root: &Path, dns: &[IpAddr], search: &[String]) -> Result<(), String> {
    if dns.is_empty() && search.is_empty() {
        return Ok(()); // the image's own stays
    }
    let mut text = String::from("# Written by hearth at boot, from the kernel command line.\n");
    for ip in dns {
        text.push_str(&format!("nameserver {ip}\n"));
    }
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    let path = root.join("etc/resolv.conf");
    crate::files::replace_file(&path, text.as_bytes(), 0o644)
        .map_err(|e| format!("cannot write /etc/resolv.conf: {}", describe(&e)))
}

/// hearth's block of `/etc/hosts`: the machine's own name, then the extra
/// lines; empty if there is neither.
pub(crate) fn hosts_block(own: Option<(Ipv4Addr, &str)>, extra: &str) -> String {
    let mut lines = String::new();
    if let Some((address, hostname)) = own {
        lines.push_str(&format!("{address}\t{hostname}\n"));
    }
    lines.push_str(extra);
    if lines.is_empty() {
        return lines;
    }
    if !lines.ends_with('\n') {
        lines.push('\n');
    }
    format!("{HOSTS_BEGIN}\n{lines}{HOSTS_END}\n")
}

/// Replaces hearth's block in `ROOT/etc/hosts` with `block` (from
/// [`hosts_block`]), keeping the rest; the file is left alone when there is
/// no block to add or remove. The error is a console line.
pub(crate) fn update_hosts(root: &Path, block: &str) -> Result<(), String> {
    let path = root.join("etc/hosts");
    let cannot = |e: io::Error| format!("cannot write /etc/hosts: {}", describe(&e));
    let mut text = match fs::read_to_string(&path) {
        Ok(current) => {
            let kept = without_hosts_block(&current);
            if block.is_empty() && kept == current {
                return Ok(());
            }
            kept
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound && block.is_empty() => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => DEFAULT_HOSTS.to_string(),
        Err(e) => return Err(cannot(e)),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(block);
    crate::files::replace_file(&path, text.as_bytes(), 0o644).map_err(cannot)
}

/// `hosts` without hearth's block (to the end, if its end line is missing).
fn without_hosts_block(hosts: &str) -> String {
    let mut kept = String::with_capacity(hosts.len());
    let mut inside = false;
    for line in hosts.split_inclusive('\n') {
        match line.trim_end() {
            HOSTS_BEGIN => inside = true,
            HOSTS_END if inside => inside = false,
            _ if !inside => kept.push_str(line),
            _ => {}
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdline;

    #[test]
    fn finds_interfaces_by_name_and_by_mac() {
        let sys = tempfile::tempdir().unwrap();
        for (name, mac) in
            [("lo", "00:00:00:00:00:00"), ("eth0", "52:54:00:00:00:02"), ("eth1", "52:54:00:00:00:01")]
        {
            fs::create_dir(sys.path().join(name)).unwrap();
            fs::write(sys.path().join(name).join("address"), format!("{mac}\n")).unwrap();
        }
        let check = |wanted: &str, expect: Option<&str>| {
            let net = cmdline::parse(&format!("hearth.net={wanted},10.0.0.2/24")).nets.remove(0);
            assert_eq!(find_interface(sys.path(), &net.interface).as_deref(), expect, "finding {wanted}");
        };
        check("eth0", Some("eth0"));
        check("eth2", None);
        check("52:54:00:00:00:01", Some("eth1"));
        check("52:54:00:00:00:0A", None);
        check("52:54:00:00:00:02", Some("eth0"));
    }

    #[test]
    fn gives_up_on_a_missing_interface_after_the_wait() {
        let sys = tempfile::tempdir().unwrap();
        let nets =
            cmdline::parse("hearth.net=52:54:00:00:00:01,10.0.0.2/24 hearth.net=eth9,10.1.0.2/24").nets;
        let started = Instant::now();
        let configured = configure_interfaces(&nets, sys.path(), Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(2), "the wait is shared by the interfaces");
        assert_eq!(
            configured.lines,
            [
                "cannot configure 10.0.0.2/24: no interface with the MAC address 52:54:00:00:00:01 appeared within 0.2 s",
                "cannot configure 10.1.0.2/24: no interface eth9 appeared within 0.2 s",
            ]
        );
        assert_eq!(configured.own_address, None);
    }

    #[test]
    fn writes_resolv_conf_over_a_symlink() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        fs::create_dir_all(root.path().join("run/resolved")).unwrap();
        fs::write(root.path().join("run/resolved/stub.conf"), "nameserver 127.0.0.53\n").unwrap();
        fs::create_dir(&etc).unwrap();
        std::os::unix::fs::symlink("../run/resolved/stub.conf", etc.join("resolv.conf")).unwrap();

        let config = cmdline::parse("hearth.dns=10.200.0.1,fd00::1 hearth.search=lab.hearth,hearth");
        write_resolv_conf(root.path(), &config.dns, &config.search).unwrap();
        assert!(!etc.join("resolv.conf").symlink_metadata().unwrap().is_symlink());
        assert_eq!(
            fs::read_to_string(etc.join("resolv.conf")).unwrap(),
            "# Written by hearth at boot, from the kernel command line.\n\
             nameserver 10.200.0.1\nnameserver fd00::1\nsearch lab.hearth hearth\n"
        );
        assert_eq!(
            fs::read_to_string(root.path().join("run/resolved/stub.conf")).unwrap(),
            "nameserver 127.0.0.53\n",
            "the link's target is left alone"
        );
        assert_eq!(fs::read_dir(&etc).unwrap().count(), 1, "no temporary file is left behind");
    }

    #[test]
    fn leaves_resolv_conf_alone_without_dns() {
        let root = tempfile::tempdir().unwrap();
        write_resolv_conf(root.path(), &[], &[]).unwrap();
        assert!(!root.path().join("etc/resolv.conf").exists());
        let config = cmdline::parse("hearth.search=lab.hearth");
        write_resolv_conf(root.path(), &config.dns, &config.search).unwrap();
        assert_eq!(
            fs::read_to_string(root.path().join("etc/resolv.conf")).unwrap(),
            "# Written by hearth at boot, from the kernel command line.\nsearch lab.hearth\n"
        );
    }

    /// Runs [`update_hosts`] on `before` (`None`: no file) with the block for
    /// `own` and `extra`, and compares the file after (`None`: still none).
    fn check_hosts(before: Option<&str>, own: Option<(Ipv4Addr, &str)>, extra: &str, expect: Option<&str>) {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("etc/hosts");
        if let Some(before) = before {
            fs::create_dir(root.path().join("etc")).unwrap();
            fs::write(&path, before).unwrap();
        }
        update_hosts(root.path(), &hosts_block(own, extra)).unwrap();
        assert_eq!(fs::read_to_string(&path).ok().as_deref(), expect, "updating {before:?}");
    }

    #[test]
    fn writes_hearths_block_of_etc_hosts() {
        let web = Some((Ipv4Addr::new(10, 200, 0, 5), "web-1"));
        let peers = "10.200.0.6 db-1\n10.200.0.7 cache-1";
        let block = "# hearth: begin (written at every boot; edits here are lost)\n\
                     10.200.0.5\tweb-1\n10.200.0.6 db-1\n10.200.0.7 cache-1\n# hearth: end\n";
        // Appended to the image's file, and replaced rather than appended
        // again at the next boot.
        check_hosts(
            Some("127.0.0.1 localhost\n"),
            web,
            peers,
            Some(&format!("127.0.0.1 localhost\n{block}")),
        );
        check_hosts(Some("127.0.0.1 localhost"), web, peers, Some(&format!("127.0.0.1 localhost\n{block}")));
        check_hosts(
            Some(&format!("127.0.0.1 localhost\n{block}::1 ip6-localhost\n")),
            web,
            "",
            Some(
                "127.0.0.1 localhost\n::1 ip6-localhost\n\
                 # hearth: begin (written at every boot; edits here are lost)\n10.200.0.5\tweb-1\n# hearth: end\n",
            ),
        );
        // An old block goes when there is nothing to say; otherwise the file
        // is untouched.
        check_hosts(Some(&format!("127.0.0.1 localhost\n{block}")), None, "", Some("127.0.0.1 localhost\n"));
        check_hosts(Some("127.0.0.1 localhost\n"), None, "", Some("127.0.0.1 localhost\n"));
        check_hosts(None, None, "", None);
        // A block whose end line was lost ends the file.
        check_hosts(
            Some(
                "127.0.0.1 localhost\n# hearth: begin (written at every boot; edits here are lost)\n1.2.3.4 x\n",
            ),
            None,
            "10.0.0.9 peer\n",
            Some(
                "127.0.0.1 localhost\n\
                 # hearth: begin (written at every boot; edits here are lost)\n10.0.0.9 peer\n# hearth: end\n",
            ),
        );
        // An image without /etc/hosts gets localhost too.
        check_hosts(
            None,
            web,
            "",
            Some(&format!(
                "{DEFAULT_HOSTS}# hearth: begin (written at every boot; edits here are lost)\n10.200.0.5\tweb-1\n# hearth: end\n"
            )),
        );
    }

    /// The command line [`configures_interfaces_in_a_network_namespace`]
    /// hands to its child.
    const CHILD_CMDLINE: &str = "HEARTH_AGENT_TEST_NETNS_CMDLINE";
    /// The inode of the parent's network namespace: the child refuses to run
    /// in it, so the host's own network is never touched.
    const PARENT_NETNS: &str = "HEARTH_AGENT_TEST_PARENT_NETNS";
    /// How the child marks its console lines in its output (the first one
    /// follows libtest's `test NAME ... ` on the same line).
    const LINE: &str = "configured: ";

    fn netns_inode() -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata("/proc/self/ns/net").expect("/proc/self/ns/net").ino()
    }

    /// A network namespace of its own, deleted on drop, even when the test
    /// fails.
    struct TestNamespace {
        name: String,
    }

    impl TestNamespace {
        /// `None` (the test is skipped, and says so) when not root; panics
        /// without iproute2, which `make setup` installs.
        fn create() -> Option<Self> {
            use std::os::unix::fs::MetadataExt;
            // /proc/self belongs to the effective user (nix's `user` feature,
            // with `geteuid`, is off).
            if fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX) != 0 {
                hearth_testkit::skip("not root, so no network namespace can be made");
                return None;
            }
            assert!(
                std::process::Command::new("ip").arg("-V").output().is_ok(),
                "ip (iproute2) is not installed; `make setup` installs it"
            );
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or_default();
            let name = format!("hearth-agent-test-{}-{nanos}", std::process::id());
            run("ip", &["netns", "add", &name]);
            Some(Self { name })
        }

        /// `ip -n NS ARGS…`; panics if it fails.
        fn ip(&self, args: &[&str]) -> String {
            run("ip", &[&["-n", self.name.as_str()], args].concat())
        }

        /// `ip -j -n NS ARGS…`, parsed.
        fn ip_json(&self, args: &[&str]) -> serde_json::Value {
            serde_json::from_str(&self.ip(&[&["-j"], args].concat())).expect("ip -j prints JSON")
        }
    }

    impl Drop for TestNamespace {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip").args(["netns", "del", &self.name]).status();
        }
    }

    fn run(program: &str, args: &[&str]) -> String {
        let output = std::process::Command::new(program).args(args).output().expect("the command starts");
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The real ioctls, on veth interfaces in a network namespace of the
    /// test's own: one found by MAC, one by name, one never appearing.
    #[test]
    fn configures_interfaces_in_a_network_namespace() {
        let Some(ns) = TestNamespace::create() else { return };
        // veth rather than dummy: dummy is a module some kernels lack. The
        // peers are up so that the interfaces get a carrier, as a NIC would.
        ns.ip(&[
            "link",
            "add",
            "eth7",
            "address",
            "52:54:00:12:34:56",
            "type",
            "veth",
            "peer",
            "name",
            "peer7",
        ]);
        ns.ip(&["link", "add", "eth8", "type", "veth", "peer", "name", "peer8"]);
        ns.ip(&["link", "set", "peer7", "up"]);
        ns.ip(&["link", "set", "peer8", "up"]);

        let cmdline = "hearth.net=52:54:00:12:34:56,10.200.0.5/24,10.200.0.1 \
                       hearth.net=eth8,10.201.0.5/16,10.201.0.1 \
                       hearth.net=52:54:00:99:99:99,10.202.0.5/24";
        let test_binary = std::env::current_exe().expect("the test binary's path");
        let child = concat!(module_path!(), "::configure_in_network_namespace_child");
        let child = child.split_once("::").map_or(child, |(_crate, path)| path);
        let output = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(test_binary)
            .args(["--exact", child, "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_CMDLINE, cmdline)
            .env(PARENT_NETNS, netns_inode().to_string())
            .output()
            .expect("ip netns exec starts");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "the child failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let lines: Vec<&str> =
            stdout.lines().filter_map(|l| l.split_once(LINE).map(|(_test_name, line)| line)).collect();
        assert_eq!(
            lines,
            [
                "eth7 10.200.0.5/24 via 10.200.0.1",
                "eth8 10.201.0.5/16 (its gateway 10.201.0.1 is unused: the default route is via 10.200.0.1)",
                "cannot configure 10.202.0.5/24: no interface with the MAC address 52:54:00:99:99:99 appeared within 1 s",
                "own address: 10.200.0.5",
            ]
        );

        for (dev, local, prefix, broadcast) in
            [("eth7", "10.200.0.5", 24, "10.200.0.255"), ("eth8", "10.201.0.5", 16, "10.201.255.255")]
        {
            let link = &ns.ip_json(&["addr", "show", "dev", dev])[0];
            let flags: Vec<&str> =
                link["flags"].as_array().unwrap().iter().filter_map(|f| f.as_str()).collect();
            assert!(flags.contains(&"UP"), "{dev} is up: {flags:?}");
            let inet: Vec<&serde_json::Value> =
                link["addr_info"].as_array().unwrap().iter().filter(|a| a["family"] == "inet").collect();
            assert_eq!(inet.len(), 1, "{dev} has one IPv4 address: {inet:?}");
            assert_eq!(inet[0]["local"], local, "{dev}'s address");
            assert_eq!(inet[0]["prefixlen"], prefix, "{dev}'s prefix");
            assert_eq!(inet[0]["broadcast"], broadcast, "{dev}'s broadcast address");
        }
        let defaults = ns.ip_json(&["-4", "route", "show", "default"]);
        let defaults = defaults.as_array().unwrap();
        assert_eq!(defaults.len(), 1, "one default route: {defaults:?}");
        assert_eq!(defaults[0]["gateway"], "10.200.0.1");
        assert_eq!(defaults[0]["dev"], "eth7");
    }

    /// The child of [`configures_interfaces_in_a_network_namespace`], run
    /// by it inside its namespace; on its own it does nothing.
    #[test]
    #[ignore = "run by configures_interfaces_in_a_network_namespace, in a network namespace"]
    fn configure_in_network_namespace_child() {
        let (Ok(cmdline), Ok(parent_netns)) = (std::env::var(CHILD_CMDLINE), std::env::var(PARENT_NETNS))
        else {
            eprintln!("not started by configures_interfaces_in_a_network_namespace; nothing to do");
            return;
        };
        assert_ne!(
            netns_inode().to_string(),
            parent_netns,
            "refusing to configure the parent's network namespace"
        );
        let config = cmdline::parse(&cmdline);
        assert_eq!(config.problems, Vec::<String>::new());
        let configured = configure_interfaces(&config.nets, Path::new(SYS_CLASS_NET), Duration::from_secs(1));
        for line in &configured.lines {
            println!("{LINE}{line}");
        }
        println!("{LINE}own address: {}", configured.own_address.map(|a| a.to_string()).unwrap_or_default());
    }
}
