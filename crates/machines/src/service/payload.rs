//! What goes into a guest: Debian's kernel and the initramfs built with the
//! current agent (prepared once per daemon), the kernel command line, and the
//! root disk's file.

use std::path::{Path, PathBuf};

use super::{Machines, blocking};
use crate::kernel::{self, Kernel};
use crate::record::Spec;
use crate::vmm::{self, Backend};
use crate::{Error, guest};

impl Machines {
    /// The kernel and initramfs for a spec, preparing them on first use.
    pub(super) async fn payload(&self, spec: &Spec) -> Result<(PathBuf, PathBuf), Error> {
        let mut cached = self.inner.payload.lock().await;
        let agent = self.agent_path()?;
        let agent_mtime = std::fs::metadata(&agent).and_then(|m| m.modified()).ok();
        // Resolving the kernel asks apt (hundreds of milliseconds): do it
        // once per daemon, and again only if the agent binary changes.
        let fresh = cached
            .as_ref()
            .is_some_and(|p| p.agent == agent && p.agent_mtime == agent_mtime && p.initrd.is_file());
        if !fresh {
            let cache = self.inner.cache_dir.clone();
            let agent_file = agent.clone();
            let (debian, initrd) = blocking(move || {
                let debian = kernel::debian_cloud_kernel(&cache.join("kernels"))?;
                let initrd = guest::initramfs(&cache.join("initramfs"), &debian, &agent_file)?;
                Ok((debian, initrd))
            })
            .await?;
            *cached = Some(Payload { debian, initrd, agent, agent_mtime });
        }
        let payload = cached.as_ref().ok_or_else(|| Error::Internal("payload vanished".into()))?;
        let vmlinuz = match &spec.kernel {
            Some(path) => PathBuf::from(path),
            None => payload.debian.vmlinuz.clone(),
        };
        Ok((vmlinuz, payload.initrd.clone()))
    }

    /// The kernel as `backend` boots it: Firecracker needs an uncompressed
    /// ELF, taken out of a bzImage once and cached next to the kernels.
    pub(super) async fn kernel_for(&self, backend: Backend, kernel: PathBuf) -> Result<PathBuf, Error> {
        if backend != Backend::Firecracker {
            return Ok(kernel);
        }
        let cache = self.inner.cache_dir.join("kernels");
        blocking(move || kernel::vmlinux(&cache, &kernel).map_err(Error::from)).await
    }

    fn agent_path(&self) -> Result<PathBuf, Error> {
        if let Some(path) = &self.inner.agent {
            return Ok(path.clone());
        }
        guest::find_agent().ok_or(Error::AgentMissing)
    }
}

/// Debian's kernel and the initramfs built for it with the current agent.
#[derive(Debug)]
pub(super) struct Payload {
    debian: Kernel,
    initrd: PathBuf,
    agent: PathBuf,
    agent_mtime: Option<std::time::SystemTime>,
}

/// The kernel command line every guest boots with on `backend`, then `args`.
pub(super) fn kernel_cmdline(backend: Backend, args: &str) -> String {
    let mut cmdline = format!("console=ttyS0 quiet panic=-1 {args}");
    if backend == Backend::Firecracker {
        cmdline.push(' ');
        cmdline.push_str(&vmm::firecracker::kernel_args());
    }
    cmdline
}

/// The root disk's file in the machine directory: a qcow2 overlay for
/// QEMU, a raw copy for Firecracker.
pub(super) fn disk_file(backend: Backend) -> &'static str {
    match backend {
        Backend::Firecracker => vmm::firecracker::DISK,
        Backend::QemuKvm | Backend::QemuTcg => "disk.qcow2",
    }
}

/// Makes a copy-on-write disk on top of an image's root file system, of
/// `bytes` if given (the guest grows its file system to fill it), else of
/// the image's size.
pub(super) fn overlay(base: &Path, disk: &Path, bytes: Option<u64>) -> Result<(), Error> {
    let mut command = std::process::Command::new("qemu-img");
    command.args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"]).arg(base).arg(disk);
    if let Some(bytes) = bytes {
        command.arg(bytes.to_string());
    }
    let out = command.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Vmm(vmm::Error::Missing("qemu-img")),
        _ => Error::io(disk, e),
    })?;
    if !out.status.success() {
        return Err(Error::Vmm(vmm::Error::Start {
            vmm: "qemu-img",
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }));
    }
    Ok(())
}
