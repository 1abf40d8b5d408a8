//! Starting and stopping a machine's VM process: prepare its disk and
//! network, launch the VMM, wait for the guest agent's hello; ask the guest
//! to power off, and kill the VM if it does not in time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth_agent::client::{AgentClient, Event, HelloInfo, MainStatus};
use nix::sys::signal::Signal;

use super::payload::{disk_file, kernel_cmdline, overlay};
use super::{MIB, Machines, blocking, lock};
use crate::Error;
use crate::record::{MachineRecord, MainProcess, State, now_unix};
use crate::vmm::{self, Backend, VmConfig, VmFiles};

/// Time a guest gets from launch to its agent's first answer.
pub(super) fn boot_deadline(backend: Backend) -> Duration {
    match backend {
        Backend::QemuTcg => Duration::from_secs(120),
        Backend::QemuKvm | Backend::Firecracker => Duration::from_secs(30),
    }
}

/// Time a guest gets to power off after it was asked to.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

impl Machines {
    async fn phase(&self, name: &str, phase: &str) -> Result<(), Error> {
        tracing::debug!(machine = name, phase, "Machine phase.");
        self.set_status(name, |s| {
            s.state = State::Starting;
            s.phase = Some(phase.to_owned());
            s.reason = None;
        })
        .await?
        .map(|_| ())
        .ok_or_else(|| Error::NotFound(name.to_owned()))
    }

    pub(super) async fn boot(&self, name: &str) -> Result<(), Error> {
        let rec = self.get(name).await?;
        let dir = self.dir(name);
        let files = VmFiles::in_dir(&dir);
        if let Some(pid) = vmm::running_pid(&files, name) {
            // Already up (e.g. adopted): just make sure the agent answers.
            return self.await_agent(name, &rec, pid, Instant::now()).await;
        }
        // A fresh boot: memory saved by an earlier sleep no longer matches
        // the disk once the guest runs from it.
        let saved = self.sleep_dir(name);
        if saved.exists() {
            std::fs::remove_dir_all(&saved).map_err(|e| Error::io(&saved, e))?;
        }
        self.phase(name, "preparing the kernel and initramfs").await?;
        let (kernel, initrd) = self.payload(&rec.spec).await?;
        let backend = rec.spec.backend;
        let kernel = self.kernel_for(backend, kernel).await?;
        self.phase(name, "preparing the disk").await?;
        let images = self.inner.images.clone();
        let digest = rec.spec.image_digest.clone();
        let disk = dir.join(disk_file(backend));
        let disk2 = disk.clone();
        let dir2 = dir.clone();
        let disk_bytes = rec.spec.disk_mib.map(|mib| mib * MIB);
        let base = blocking(move || -> Result<PathBuf, Error> {
            std::fs::create_dir_all(&dir2).map_err(|e| Error::io(&dir2, e))?;
            let image = images.get(&digest)?.ok_or_else(|| Error::ImageNotFound(digest.clone()))?;
            // An existing disk is the machine's own (stop and start keep
            // it), already at its size.
            if disk2.exists() {
                return Ok(image.rootfs);
            }
            // Only larger: the image's ext4 must fit, and at its own size
            // the overlay takes the base's size by itself.
            let size = disk_bytes.filter(|&bytes| bytes > image.size_bytes);
            match backend {
                Backend::Firecracker => vmm::firecracker::raw_disk(&image.rootfs, &disk2, size)?,
                Backend::QemuKvm | Backend::QemuTcg => overlay(&image.rootfs, &disk2, size)?,
            }
            Ok(image.rootfs)
        })
        .await?;
        if !rec.spec.nics.is_empty() {
            self.phase(name, "connecting its network interfaces").await?;
            for nic in &rec.spec.nics {
                self.inner.networks.prepare(nic).await?;
            }
        }
        let mut cmdline = kernel_cmdline(backend, &format!("hearth.root=/dev/vda hearth.hostname={name}"));
        cmdline.push_str(&self.inner.networks.guest_cmdline(
            name,
            &rec.spec.nics,
            &self.inner.networks.subnets().await?,
        ));
        let spec = &rec.spec;
        if let Some(main) = super::main_spec(
            &spec.entrypoint,
            &spec.env,
            spec.workdir.as_deref(),
            spec.user.as_deref(),
            spec.restart,
        ) {
            cmdline.push_str(" hearth.main=");
            cmdline.push_str(&hearth_agent::cmdline::encode_main(&main));
        }
        if self.config_feed().is_some() {
            cmdline.push_str(&config_cmdline(name, spec.on_config_change.as_deref()));
        }
        let config = VmConfig {
            name: name.to_owned(),
            dir: dir.clone(),
            kernel,
            initrd,
            cmdline,
            disk: Some(disk),
            disk_base: (backend != Backend::Firecracker).then_some(base),
            cpus: rec.spec.cpus,
            memory_mib: rec.spec.memory_mib,
            nics: rec.spec.nics.iter().map(|n| (n.tap.clone(), n.mac.clone())).collect(),
        };
        self.phase(name, &format!("starting the VM ({})", rec.spec.backend)).await?;
        // A new boot: the last one's main process and config are history.
        self.set_status(name, |s| {
            s.main = None;
            s.config = None;
        })
        .await?;
        let launched = Instant::now();
        let firecracker = self.firecracker_binary();
        blocking(move || vmm::launch(backend, &firecracker, &config).map_err(Error::from)).await?;
        let pid = vmm::running_pid(&files, name).ok_or_else(|| {
            Error::Vmm(vmm::Error::Start {
                vmm: vmm_name(backend),
                message: "it exited right after starting; see `hearth machine logs`".into(),
            })
        })?;
        self.set_status(name, |s| s.pid = Some(pid)).await?;
        self.phase(name, "booting the kernel").await?;
        self.await_agent(name, &rec, pid, launched).await
    }

    pub(super) async fn await_agent(
        &self,
        name: &str,
        rec: &MachineRecord,
        pid: u32,
        launched: Instant,
    ) -> Result<(), Error> {
        let files = VmFiles::in_dir(&self.dir(name));
        let backend = rec.spec.backend;
        let deadline = boot_deadline(backend);
        let vm_name = name.to_owned();
        let connected = blocking(move || {
            // Give up early if the VM process dies while we wait.
            let started = Instant::now();
            loop {
                let left = deadline.saturating_sub(started.elapsed());
                match connect_agent(&files, backend, left.min(Duration::from_secs(5))) {
                    Ok(found) => return Ok(found),
                    Err(_) if !vmm::is_vm_process(pid, &vm_name) => {
                        return Err(Error::BootFailed(format!(
                            "the VM process exited during boot; the console says: {}",
                            console_tail(&files.console, 3)
                        )));
                    }
                    Err(_) if started.elapsed() >= deadline => {
                        return Err(Error::BootFailed(format!(
                            "the guest agent did not answer within {}s; the console says: {}",
                            deadline.as_secs(),
                            console_tail(&files.console, 3)
                        )));
                    }
                    Err(_) => continue,
                }
            }
        })
        .await;
        let (client, hello) = match connected {
            Ok(found) => found,
            Err(error) => {
                kill_now(pid, name).await;
                return Err(error);
            }
        };
        let boot_ms = launched.elapsed().as_millis() as u64;
        self.follow_agent_events(name, &client);
        let client = Arc::new(client.with_timeout(hearth_agent::client::DEFAULT_TIMEOUT));
        lock(&self.inner.agents).insert(name.to_owned(), client.clone());
        // Before the machine counts as running: its main process waits for this.
        self.push_config_on_connect(name, &client).await;
        tracing::info!(machine = name, pid, boot_ms, backend = %rec.spec.backend, "Machine is running.");
        // Its idle time starts now, whatever an earlier life left.
        self.inner.networks.activity().woke(name);
        self.set_status(name, |s| {
            s.state = State::Running;
            s.phase = None;
            s.reason = None;
            s.pid = Some(pid);
            s.boot_ms = Some(boot_ms);
            s.kernel = Some(hello.kernel.clone());
            s.started_at = Some(now_unix());
        })
        .await?;
        Ok(())
    }

    pub(super) async fn shut_down(&self, name: &str) -> Result<(), Error> {
        let files = VmFiles::in_dir(&self.dir(name));
        // A record gone meanwhile: its VM is stopped the QEMU way, which
        // ends a Firecracker too, by SIGKILL after the grace period.
        let backend = self.find(name).await?.map_or(Backend::QemuTcg, |(rec, _)| rec.spec.backend);
        if let Some(pid) = vmm::running_pid(&files, name) {
            self.set_status(name, |s| {
                s.state = State::Stopping;
                s.phase = Some("asking the guest to power off".into());
            })
            .await?;
            let agent = lock(&self.inner.agents).get(name).cloned();
            let vm = name.to_owned();
            blocking(move || {
                // Firecracker ends when its guest restarts, and ignores a
                // power-off; QEMU runs with -no-reboot, so either ends it.
                let restart = backend == Backend::Firecracker;
                let asked = match agent {
                    Some(agent) => agent.shutdown(restart).is_ok(),
                    None => connect_agent(&files, backend, Duration::from_secs(3))
                        .is_ok_and(|(agent, _)| agent.shutdown(restart).is_ok()),
                };
                // An agent that does not answer still restarts the guest
                // cleanly on Ctrl-Alt-Del, which Firecracker can press.
                let asked = asked
                    || (backend == Backend::Firecracker
                        && vmm::firecracker::ctrl_alt_del(
                            &vmm::firecracker::Api::new(&files.control).with_timeout(Duration::from_secs(5)),
                        )
                        .is_ok());
                let grace = if asked { SHUTDOWN_GRACE } else { Duration::ZERO };
                let started = Instant::now();
                while vmm::is_vm_process(pid, &vm) && started.elapsed() < grace {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok::<(), Error>(())
            })
            .await?;
            if vmm::is_vm_process(pid, name) {
                tracing::warn!(machine = name, "The guest did not power off in time; stopping its VM.");
                kill_now(pid, name).await;
            }
        }
        self.forget_agent(name);
        self.set_status(name, |s| {
            s.state = State::Stopped;
            s.phase = None;
            s.pid = None;
            s.reason = None;
        })
        .await?;
        tracing::info!(machine = name, "Machine stopped.");
        Ok(())
    }

    /// Writes what the agent reports about the main process into the
    /// record, for as long as `client` is connected. The agent repeats its
    /// latest report after every hello, so a reconnecting daemon catches up.
    pub(super) fn follow_agent_events(&self, name: &str, client: &AgentClient) {
        let Some(events) = client.take_events() else { return };
        let (this, machine) = (self.clone(), name.to_owned());
        let handle = tokio::runtime::Handle::current();
        let spawned = std::thread::Builder::new().name("agent-events".into()).spawn(move || {
            while let Ok(event) = events.recv() {
                match event {
                    Event::Main(report) => {
                        if let Err(error) = handle.block_on(this.record_main(&machine, &report)) {
                            tracing::warn!(machine, %error, "Could not record the main process's state.");
                        }
                    }
                    Event::Error(message) => {
                        tracing::debug!(machine, message, "The agent reported an error.")
                    }
                }
            }
        });
        if let Err(error) = spawned {
            tracing::warn!(machine = name, %error, "Cannot follow the agent's reports.");
        }
    }

    async fn record_main(&self, name: &str, report: &MainStatus) -> Result<(), Error> {
        let mut restarted = None;
        let updated = self
            .update(name, |rec| {
                let previous = rec.status.main.as_ref();
                let main = MainProcess::from_report(report, previous);
                let changed = previous != Some(&main);
                restarted = previous.filter(|p| main.restarts > p.restarts).cloned();
                rec.status.main = Some(main);
                changed
            })
            .await?;
        if let (Some(before), Some(main)) =
            (&restarted, updated.as_ref().and_then(|r| r.status.main.as_ref()))
        {
            let ended = match (before.exit_code, before.signal) {
                (_, Some(signal)) => format!("killed by signal {signal}"),
                (Some(code), None) => format!("exited with code {code}"),
                (None, None) => "ended".to_owned(),
            };
            let reason = format!("the agent restarted the main process ({ended}); restart {}", main.restarts);
            hearth_store::acts::record(&*self.inner.store, &format!("machine:{name}"), "restarted", reason)
                .await;
        }
        if let Some(main) = updated.and_then(|rec| rec.status.main) {
            tracing::info!(
                machine = name,
                state = main.state.as_str(),
                pid = main.pid,
                exit_code = main.exit_code,
                signal = main.signal,
                restarts = main.restarts,
                "Main process reported."
            );
        }
        Ok(())
    }

    /// The firecracker binary the host probe found (else `firecracker` on PATH).
    pub(super) fn firecracker_binary(&self) -> PathBuf {
        self.host().firecracker.map_or_else(|| PathBuf::from(vmm::firecracker::BINARY), |tool| tool.path)
    }
}

/// ` hearth.config=1` and the reload action, for a machine whose config is pushed.
fn config_cmdline(name: &str, on_config_change: Option<&str>) -> String {
    use hearth_agent::cmdline::encode_reload;
    let mut args = " hearth.config=1".to_owned();
    match on_config_change.map(hearth_agent::config::Reload::parse) {
        None => {}
        Some(Ok(reload)) => {
            args.push_str(" hearth.config_reload=");
            args.push_str(&encode_reload(&reload));
        }
        // Checked at creation: only a record written by hand gets here.
        Some(Err(why)) => tracing::warn!(machine = name, why, "Ignoring the machine's reload action."),
    }
    args
}

fn vmm_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Firecracker => "firecracker",
        Backend::QemuKvm | Backend::QemuTcg => "qemu",
    }
}

/// Connects to the agent (QEMU's virtio-serial socket, or Firecracker's
/// vsock socket with its handshake) and exchanges hellos within `deadline`.
pub(super) fn connect_agent(
    files: &VmFiles,
    backend: Backend,
    deadline: Duration,
) -> Result<(AgentClient, HelloInfo), Error> {
    let started = Instant::now();
    let socket = match backend {
        Backend::Firecracker => &files.vsock,
        Backend::QemuKvm | Backend::QemuTcg => &files.agent,
    };
    let connect = || match backend {
        Backend::Firecracker => AgentClient::connect_firecracker(
            socket,
            vmm::firecracker::DEFAULT_VSOCK_PORT,
            Duration::from_secs(1),
        ),
        Backend::QemuKvm | Backend::QemuTcg => AgentClient::connect_unix(socket, Duration::from_secs(1)),
    };
    loop {
        let attempt = connect().map_err(|e| Error::io(socket, e)).and_then(|c| {
            let c = c.with_timeout(Duration::from_millis(1000));
            let hello = c.hello().map_err(Error::Agent)?;
            Ok((c, hello))
        });
        match attempt {
            Ok(found) => return Ok(found),
            Err(error) if started.elapsed() >= deadline => return Err(error),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// SIGKILLs the VM and waits (briefly) for it to be gone.
pub(super) async fn kill_now(pid: u32, name: &str) {
    vmm::signal(pid, Signal::SIGKILL);
    for _ in 0..100 {
        if !vmm::is_vm_process(pid, name) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The last `lines` non-empty lines of the console log, joined.
pub(super) fn console_tail(console: &Path, lines: usize) -> String {
    // Read from the end: the guest decides how large the log is.
    let text = vmm::console::read_end(console, Some(lines + 32))
        .map(|(b, _)| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let tail: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let tail = &tail[tail.len().saturating_sub(lines)..];
    if tail.is_empty() { "(nothing)".to_owned() } else { tail.join(" | ") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_agent::config::Reload;
    use nix::sys::signal::Signal as Sig;

    #[test]
    fn a_fed_machine_boots_told_to_wait_for_config_and_how_to_reload() {
        let parse = |args: &str| hearth_agent::cmdline::parse(&kernel_cmdline_for_test(args));
        let held = parse(&config_cmdline("m", None));
        assert!(held.config && held.config_reload.is_none(), "{held:?}");
        let signal = parse(&config_cmdline("m", Some("SIGHUP")));
        assert!(signal.config, "{signal:?}");
        assert_eq!(signal.config_reload, Some(Reload::Signal(Sig::SIGHUP)));
        let command = parse(&config_cmdline("m", Some("nginx -s reload && echo \"done\"")));
        assert_eq!(command.config_reload, Some(Reload::Command("nginx -s reload && echo \"done\"".into())));
        assert!(command.problems.is_empty(), "{:?}", command.problems);
    }

    fn kernel_cmdline_for_test(args: &str) -> String {
        kernel_cmdline(Backend::QemuTcg, &format!("hearth.root=/dev/vda{args}"))
    }
}
