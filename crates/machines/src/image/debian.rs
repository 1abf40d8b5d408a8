//! Debian images built with debootstrap from the host's mirror, and the
//! defaults every machine's root file system needs.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use super::{Error, Progress, io};

/// The mirror used when the host names no Debian mirror.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// How many lines of debootstrap's output an error shows.
const ERROR_LINES: usize = 15;

/// The Debian mirror the host's apt uses, from `APT_DIR/sources.list` and
/// `APT_DIR/sources.list.d/*.{list,sources}` (one-line and deb822 formats),
/// or [`DEFAULT_MIRROR`]. Only `http(s)` archives with a `debian` path
/// component count, so `debian-security`, Ubuntu's archive and `cdrom:` are
/// passed over.
pub fn debian_mirror(apt_dir: &Path) -> String {
    let mut files = vec![apt_dir.join("sources.list")];
    if let Ok(dir) = fs::read_dir(apt_dir.join("sources.list.d")) {
        let mut more: Vec<_> = dir
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
            .collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else { continue };
        let uris = if file.extension().is_some_and(|e| e == "sources") {
            deb822_uris(&text)
        } else {
            one_line_uris(&text)
        };
        if let Some(uri) = uris.into_iter().find(|u| is_debian_archive(u)) {
            return uri.trim_end_matches('/').to_owned();
        }
    }
    DEFAULT_MIRROR.to_owned()
}

/// URIs of enabled `deb` stanzas whose suites are not all security suites.
fn deb822_uris(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n").flat_map(|s| s.split("\r\n\r\n")) {
        let field = |name: &str| {
            stanza.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let types = field("Types").unwrap_or_default();
        let enabled = field("Enabled").is_none_or(|e| !e.eq_ignore_ascii_case("no"));
        let security = field("Suites").is_some_and(|s| s.split_whitespace().all(|s| s.contains("security")));
        if enabled && !security && types.split_whitespace().any(|t| t == "deb") {
            out.extend(field("URIs").unwrap_or_default().split_whitespace().map(str::to_owned));
        }
    }
    out
}

/// URIs of `deb [options] URI SUITE …` lines.
fn one_line_uris(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut uri = words.next();
        if uri.is_some_and(|w| w.starts_with('[')) {
            let options_end = line.find(']').map(|i| i + 1).unwrap_or(line.len());
            let mut rest = line[options_end..].split_whitespace();
            uri = rest.next();
            words = rest;
        }
        let suite = words.next().unwrap_or_default();
        if let Some(uri) = uri
            && !suite.contains("security")
        {
            out.push(uri.to_owned());
        }
    }
    out
}

fn is_debian_archive(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once("://") else { return false };
    if scheme != "http" && scheme != "https" {
        return false;
    }
    let path = rest.split_once('/').map(|(_, p)| p).unwrap_or_default();
    path.split('/').any(|segment| segment == "debian")
}

/// Suite and package names reach debootstrap's command line: only Debian's
/// own name characters are allowed.
pub(super) fn check_name(name: &str, what: &'static str) -> Result<(), Error> {
    let ok = name.len() >= 2
        && name.len() <= 100
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'+' | b'-'));
    if ok { Ok(()) } else { Err(Error::BadDebianName(name.to_owned(), what)) }
}

/// Runs `debootstrap --variant=minbase` into `target`, reporting its `I:`
/// lines as build steps.
pub(super) fn debootstrap(
    suite: &str,
    packages: &[String],
    mirror: &str,
    target: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), Error> {
    let mut command = Command::new("debootstrap");
    command.args(["--variant=minbase", "--components=main"]);
    if !packages.is_empty() {
        command.arg(format!("--include={}", packages.join(",")));
    }
    command.arg(suite).arg(target).arg(mirror);
    let shown = format!("debootstrap --variant=minbase {suite} {} {mirror}", target.display());
    let mut child =
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(
            |source| Error::Spawn { program: "debootstrap".to_owned(), package: "debootstrap", source },
        )?;
    let (send, lines) = mpsc::channel::<String>();
    let readers: Vec<_> = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let send = send.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = send.send(line);
            }
        })
    })
    .collect();
    drop(send);
    let mut tail: Vec<String> = Vec::new();
    for line in lines {
        if let Some(step) = line.strip_prefix("I: ") {
            progress(Progress::Building { step: step.trim().to_owned() });
        }
        tail.push(line);
        if tail.len() > ERROR_LINES {
            tail.remove(0);
        }
    }
    for reader in readers {
        let _ = reader.join();
    }
    let status = child.wait().map_err(|source| Error::Spawn {
        program: "debootstrap".to_owned(),
        package: "debootstrap",
        source,
    })?;
    if status.success() {
        return Ok(());
    }
    let log = target.join("debootstrap/debootstrap.log");
    let mut output = tail.join("\n");
    if let Ok(text) = fs::read_to_string(&log) {
        let lines: Vec<&str> = text.lines().collect();
        output.push_str(&format!("\n(end of {}:)\n", log.display()));
        output.push_str(&lines[lines.len().saturating_sub(ERROR_LINES)..].join("\n"));
    }
    if output.trim().is_empty() {
        output = format!("it exited with {status}");
    }
    Err(Error::Command { command: shown, output })
}

/// Gives a debootstrapped tree the defaults of a fresh machine: nothing of
/// the build host (its hostname, its resolver) and nothing that must be
/// unique per machine (the machine id, left empty so systemd makes one at
/// first boot; SSH host keys, which `machine ssh` makes on first use), and
/// no package downloads.
pub fn prepare_debian_tree(root: &Path) -> Result<(), Error> {
    let etc = root.join("etc");
    fs::create_dir_all(&etc).map_err(io(&etc))?;
    replace_file(&etc.join("machine-id"), b"", 0o444)?;
    replace_file(
        &etc.join("resolv.conf"),
        b"# hearth writes the machine's resolver here when it boots.\n",
        0o644,
    )?;
    replace_file(&etc.join("hostname"), b"localhost\n", 0o644)?;
    let hosts = etc.join("hosts");
    if fs::symlink_metadata(&hosts).is_err() {
        replace_file(&hosts, b"127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n", 0o644)?;
    }
    let dbus_id = root.join("var/lib/dbus/machine-id");
    if fs::symlink_metadata(&dbus_id).is_ok_and(|m| m.is_file()) {
        fs::remove_file(&dbus_id).map_err(io(&dbus_id))?;
    }
    remove_ssh_host_keys(&etc.join("ssh"))?;
    for dir in ["var/cache/apt/archives", "var/cache/apt"] {
        let dir = root.join(dir);
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "deb" || e == "bin") && path.is_file() {
                fs::remove_file(&path).map_err(io(&path))?;
            }
        }
    }
    ensure_mount_points(root)
}

/// Removes `ssh_host_*_key` and their `.pub` halves: openssh-server makes
/// them when it is installed, and every machine of the image would share them.
fn remove_ssh_host_keys(ssh: &Path) -> Result<(), Error> {
    let Ok(entries) = fs::read_dir(ssh) else { return Ok(()) };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("ssh_host_") && (name.ends_with("_key") || name.ends_with("_key.pub")) {
            let path = entry.path();
            fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// The directories the guest mounts file systems on, which some images
/// leave out because container runtimes make them.
pub(super) fn ensure_mount_points(root: &Path) -> Result<(), Error> {
    for (dir, mode) in [("dev", 0o755), ("proc", 0o555), ("sys", 0o555), ("run", 0o755), ("tmp", 0o1777)] {
        let path = root.join(dir);
        if fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        fs::create_dir(&path).map_err(io(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io(&path))?;
    }
    Ok(())
}

/// Writes `content` at `path`, replacing a file or a symbolic link there.
fn replace_file(path: &Path, content: &[u8], mode: u32) -> Result<(), Error> {
    if fs::symlink_metadata(path).is_ok_and(|m| !m.is_dir()) {
        fs::remove_file(path).map_err(io(path))?;
    }
    fs::write(path, content).map_err(io(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io(path))
}
