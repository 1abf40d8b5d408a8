//! `hearth machine ssh`: the system `ssh` into a machine whose image has an
//! SSH server, with a key pair hearth keeps per data dir.
//!
//! Orchestration in the CLI, through the same API calls a user could make:
//! a sleeping machine is woken first; one `exec` in the guest checks for `sshd`, authorizes hearth's public
//! key for root (idempotently), makes the machine's host key on first use
//! and starts `sshd` with it if it is not running. Only an ed25519 host
//! key: every current client speaks it, and an RSA key takes seconds to
//! make under software emulation. Then this process becomes `ssh`,
//! so the terminal, signals and the remote exit code are ssh's own; for a
//! machine that sleeps when idle, it runs `ssh` as a child instead, and
//! holds an exec session open meanwhile, which keeps the machine awake.
//!
//! The key pair and a known-hosts file are in `DATA_DIR/ssh/`: the key is
//! the client's, like the API token, not state the daemon manages. Host
//! keys are remembered under an alias per machine (name and creation time),
//! so a new machine that reuses a name or an address is a new host, not an
//! impostor.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use hearth_client::Client;
use hearth_client::types::{ExecStart, Machine};
use tokio_tungstenite::tungstenite::Message;

/// Where the image must have its SSH server.
const SSHD: &str = "/usr/sbin/sshd";
/// The exit code of [`PREPARE`] when there is no SSH server.
const NO_SSHD: i32 = 90;
/// How long `sshd`, just started, gets to accept connections (software
/// emulation is slow).
const SSHD_WAIT: Duration = Duration::from_secs(30);

/// Run by `/bin/sh` in the guest, with the public key as `$1`.
const PREPARE: &str = r#"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
[ -x /usr/sbin/sshd ] || exit 90
set -e
umask 077
mkdir -p /root/.ssh
touch /root/.ssh/authorized_keys
grep -qxF "$1" /root/.ssh/authorized_keys || printf '%s\n' "$1" >> /root/.ssh/authorized_keys
chmod 700 /root/.ssh
chmod 600 /root/.ssh/authorized_keys
umask 022
key=/etc/ssh/ssh_host_ed25519_key
[ -s "$key" ] || ssh-keygen -q -t ed25519 -N '' -f "$key"
mkdir -p /run/sshd
if [ -s /run/sshd.pid ] && kill -0 "$(cat /run/sshd.pid)" 2>/dev/null; then exit 0; fi
/usr/sbin/sshd -h "$key"
"#;

/// Makes sure the machine accepts hearth's key over SSH, then becomes
/// `ssh root@MACHINE [CMD...]`. Returns only on failure.
pub(crate) async fn ssh(
    client: &Client,
    data_dir: &Path,
    name: &str,
    command: Vec<String>,
) -> anyhow::Result<i32> {
    let mut m = client.machine(name).await?;
    // A sleeping machine is woken first, as `exec` wakes it.
    if m.state == "sleeping" || m.desired == "sleeping" {
        eprintln!("waking {name}…");
        m = client.wake_machine(name).await?;
    }
    if m.state != "running" {
        bail!("machine {name} is {}, not running; start it with `hearth machine start {name}`", m.state);
    }
    let keys = KeyPair::ensure(&data_dir.join("ssh"))?;
    let public = std::fs::read_to_string(&keys.public)
        .with_context(|| format!("cannot read {}", keys.public.display()))?;
    let argv = ["/bin/sh", "-c", PREPARE, "sh", public.trim()].map(str::to_owned).to_vec();
    let (code, stderr) = exec_captured(client, name, argv)
        .await
        .with_context(|| format!("cannot prepare machine {name} for SSH"))?;
    match code {
        0 => {}
        NO_SSHD => bail!(
            "machine {name}'s image ({}) has no SSH server ({SSHD}); build an image with one, e.g. \
             `hearth image build debian --packages openssh-server --name debian-ssh:bookworm`, and run \
             the machine from it (or use `hearth machine exec {name} -- CMD`, which needs no SSH)",
            m.image
        ),
        code => {
            bail!("could not start the SSH server in machine {name} (exit code {code}): {}", stderr.trim())
        }
    }
    let address = address(client, &m).await?;
    wait_for_sshd(address, name).await?;
    let mut ssh = std::process::Command::new("ssh");
    ssh.arg("-i")
        .arg(&keys.private)
        .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", keys.known_hosts.display()))
        .args(["-o", "GlobalKnownHostsFile=/dev/null", "-o", "HashKnownHosts=no", "-o", "LogLevel=ERROR"])
        .arg("-o")
        .arg(format!("HostKeyAlias=hearth-{}-{}", m.name, m.created_at))
        .arg("-p")
        .arg(address.port().to_string())
        .arg(format!("root@{}", address.ip()))
        .args(&command);
    if m.sleep_after_secs.is_some() {
        return ssh_holding_awake(client, name, ssh).await;
    }
    let error = ssh.exec();
    if error.kind() == std::io::ErrorKind::NotFound {
        bail!("ssh is not installed: install the openssh-client package (`make setup` does)");
    }
    Err(error).context("cannot run ssh")
}

/// Runs `ssh` as a child while an exec session holds the machine awake,
/// for a machine that sleeps when idle: the SSH connection goes straight to
/// the machine's address, where no forward counts it, so without the
/// session the machine would fall asleep under its user. The session runs
/// `cat` on a stdin that stays open, and ends with ssh. Returns ssh's exit
/// code (128 and the signal's number if a signal ended it).
async fn ssh_holding_awake(
    client: &Client,
    name: &str,
    mut ssh: std::process::Command,
) -> anyhow::Result<i32> {
    let mut hold = client.exec_socket(name).await?;
    let start = ExecStart { argv: vec!["cat".into()], env: vec![], cwd: None, tty: None, stdin: true };
    hold.send(Message::Text(serde_json::to_string(&start)?.into())).await?;
    // The terminal's Ctrl-C and Ctrl-\ go to the whole process group: ssh
    // decides what they do, and this process waits for it. Handlers (not
    // an ignore, which a child would inherit) leave ssh's own untouched.
    let mut interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut quits = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::quit())?;
    let mut child = match ssh.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("ssh is not installed: install the openssh-client package (`make setup` does)")
        }
        Err(e) => return Err(e).context("cannot run ssh"),
    };
    let mut ended = tokio::task::spawn_blocking(move || child.wait());
    let mut holding = true;
    let status = loop {
        tokio::select! {
            status = &mut ended => break status?.context("cannot wait for ssh")?,
            _ = interrupts.recv() => {}
            _ = quits.recv() => {}
            message = hold.next(), if holding => {
                // The session ended (its exit code came, the machine
                // restarted, the daemon stopped): ssh goes on without it.
                holding = matches!(message, Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))));
            }
        }
    };
    let _ = hold.close(None).await;
    use std::os::unix::process::ExitStatusExt as _;
    Ok(status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1))
}

/// hearth's SSH key pair and known-hosts file.
struct KeyPair {
    private: PathBuf,
    public: PathBuf,
    known_hosts: PathBuf,
}

impl KeyPair {
    /// The pair in `dir`, made with `ssh-keygen` the first time (under a
    /// lock, so that two first uses at once make one pair).
    fn ensure(dir: &Path) -> anyhow::Result<KeyPair> {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        let keys = KeyPair {
            private: dir.join("id_ed25519"),
            public: dir.join("id_ed25519.pub"),
            known_hosts: dir.join("known_hosts"),
        };
        if keys.private.is_file() && keys.public.is_file() {
            return Ok(keys);
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let lock_path = dir.join(".lock");
        let lock = std::fs::File::create(&lock_path)
            .with_context(|| format!("cannot create {}", lock_path.display()))?;
        lock.lock().with_context(|| format!("cannot lock {}", lock_path.display()))?;
        if keys.private.is_file() && keys.public.is_file() {
            return Ok(keys);
        }
        // A pair half made by an interrupted run is made again.
        let _ = std::fs::remove_file(&keys.private);
        let _ = std::fs::remove_file(&keys.public);
        let comment = format!("hearth@{}", nix::unistd::gethostname().unwrap_or_default().to_string_lossy());
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", &comment, "-f"])
            .arg(&keys.private)
            .stdin(std::process::Stdio::null())
            .output();
        let out = match out {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("ssh-keygen is not installed: install the openssh-client package (`make setup` does)")
            }
            Err(e) => return Err(e).context("cannot run ssh-keygen"),
        };
        if !out.status.success() {
            bail!("ssh-keygen could not make a key pair: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        // ssh-keygen already makes it 0600; ssh refuses a key others can read.
        std::fs::set_permissions(&keys.private, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", keys.private.display()))?;
        Ok(keys)
    }
}

/// Where this host reaches the machine's SSH server: its address on a
/// network whose bridge is on this host, else a port forwarded to its port
/// 22 on 127.0.0.1.
async fn address(client: &Client, m: &Machine) -> anyhow::Result<SocketAddr> {
    let mut nics = Vec::new();
    for nic in &m.nics {
        let Ok(ip) = nic.ip.parse::<Ipv4Addr>() else { continue };
        // The bridge carries the network's gateway address: with it here,
        // this host routes to the machine.
        let here = match client.network(&nic.network).await {
            Ok(network) => Path::new("/sys/class/net").join(&network.bridge).exists(),
            Err(_) => false,
        };
        nics.push((ip, here));
    }
    if let Some(address) = choose_address(&nics, &m.ports) {
        return Ok(address);
    }
    let name = &m.name;
    if m.nics.is_empty() {
        bail!(
            "machine {name} is on no network, so this host cannot reach its SSH server; run it on a \
             network (`hearth machine run --network NAME ...`) or forward a port to it \
             (`hearth machine run -p 2222:22 ...`)"
        )
    }
    bail!(
        "this host cannot reach machine {name}: the bridges of its networks are not here (is the daemon \
         on another host?) and no port is forwarded to its port 22; run it with `-p HOSTPORT:22` and \
         use ssh on the daemon's host"
    )
}

/// The first address whose network this host has a bridge for (`nics`:
/// address and whether it is reachable), else `127.0.0.1` and the host
/// port of a TCP forward to port 22 (`ports`: `HOST:GUEST[/udp]`).
fn choose_address(nics: &[(Ipv4Addr, bool)], ports: &[String]) -> Option<SocketAddr> {
    if let Some((ip, _)) = nics.iter().find(|(_, here)| *here) {
        return Some(SocketAddr::from((*ip, 22)));
    }
    ports
        .iter()
        .filter_map(|p| p.parse::<hearth_net::service::PortSpec>().ok())
        .find(|p| p.guest == 22 && !p.udp)
        .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p.host)))
}

/// Waits until `sshd` accepts connections: it listens only after it has
/// daemonized.
async fn wait_for_sshd(address: SocketAddr, name: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let attempt =
            tokio::task::spawn_blocking(move || TcpStream::connect_timeout(&address, Duration::from_secs(2)))
                .await?;
        match attempt {
            Ok(_) => return Ok(()),
            Err(e) if started.elapsed() >= SSHD_WAIT => bail!(
                "the SSH server of machine {name} does not answer on {address} ({e}); \
                 `hearth machine logs {name}` shows its console"
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Runs `argv` in the machine without stdin; returns its exit code and
/// what it wrote to stderr.
async fn exec_captured(client: &Client, name: &str, argv: Vec<String>) -> anyhow::Result<(i32, String)> {
    let mut socket = client.exec_socket(name).await?;
    let start = ExecStart { argv, env: vec![], cwd: None, tty: None, stdin: false };
    socket.send(Message::Text(serde_json::to_string(&start)?.into())).await?;
    let mut stderr = Vec::new();
    while let Some(message) = socket.next().await {
        match message {
            Ok(Message::Binary(data)) if data.first() == Some(&hearth_client::types::EXEC_STDERR) => {
                stderr.extend_from_slice(&data[1..]);
            }
            Ok(Message::Text(text)) => {
                return Ok((super::exit_code(&text)?, String::from_utf8_lossy(&stderr).into_owned()));
            }
            Ok(_) => {}
            Err(e) => bail!("the exec session broke off: {e}"),
        }
    }
    bail!("the daemon ended the exec session without an exit code")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_the_machines_own_if_reachable_else_a_forwarded_port() {
        let ip = |last| Ipv4Addr::new(10, 245, 0, last);
        let ports = |list: &[&str]| list.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>();
        let forwarded = ports(&["8080:80", "2222:22/udp", "2200:22"]);
        for (nics, ports, expect) in [
            (vec![(ip(2), true)], forwarded.clone(), Some("10.245.0.2:22")),
            (vec![(ip(2), false), (ip(3), true)], vec![], Some("10.245.0.3:22")),
            (vec![(ip(2), false)], forwarded.clone(), Some("127.0.0.1:2200")),
            (vec![], forwarded, Some("127.0.0.1:2200")),
            (vec![(ip(2), false)], ports(&["2222:22/udp"]), None),
            (vec![], vec![], None),
        ] {
            let got = choose_address(&nics, &ports).map(|a| a.to_string());
            assert_eq!(got.as_deref(), expect, "{nics:?} {ports:?}");
        }
    }
}
