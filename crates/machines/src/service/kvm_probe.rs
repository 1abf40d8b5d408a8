//! The KVM boot probe: whether KVM really works, learnt by booting a test
//! guest under it, cached per host boot, kernel and VMM.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::boot::{connect_agent, console_tail};
use super::payload::kernel_cmdline;
use super::{Machines, blocking, lock};
use crate::probe;
use crate::record::Spec;
use crate::vmm::{self, Backend, VmConfig, VmFiles};

impl Machines {
    /// Learns whether KVM really works by booting the guest payload under it
    /// with a deadline (nested KVM is often present but broken), on QEMU, or
    /// on Firecracker where QEMU is not installed. The answer is cached per
    /// host boot, kernel and VMM, so it is paid once.
    pub async fn probe_kvm(&self) {
        let host = self.host();
        if host.kvm.usable.is_some() {
            return;
        }
        let Some(backend) = probe::kvm_probe_backend(&host) else { return };
        let result = self.kvm_boot_probe(backend).await;
        let mut host = lock(&self.inner.host);
        match result {
            Ok(detail) => {
                host.kvm.usable = Some(true);
                host.kvm.detail = detail;
            }
            Err(detail) => {
                host.kvm.usable = Some(false);
                host.kvm.detail = detail;
            }
        }
        tracing::info!(usable = ?host.kvm.usable, detail = host.kvm.detail, "KVM probe finished.");
    }

    /// Boots the test guest on `backend` (qemu-kvm or Firecracker, both KVM).
    async fn kvm_boot_probe(&self, backend: Backend) -> Result<String, String> {
        let spec_kernel = Spec {
            image: String::new(),
            image_digest: String::new(),
            backend,
            cpus: 1,
            memory_mib: 256,
            entrypoint: vec![],
            env: vec![],
            workdir: None,
            user: None,
            restart: Default::default(),
            kernel: None,
            auto_remove: true,
            nics: vec![],
            ports: vec![],
            disk_mib: None,
            on_config_change: None,
            sleep_after_secs: None,
        };
        let (kernel, initrd) = self
            .payload(&spec_kernel)
            .await
            .map_err(|e| format!("could not prepare a test guest: {}", crate::chain(&e)))?;
        let host = self.host();
        let vmm = match backend {
            Backend::Firecracker => host.firecracker.as_ref(),
            Backend::QemuKvm | Backend::QemuTcg => host.qemu.as_ref(),
        }
        .map(|tool| format!("{}|{}", tool.path.display(), tool.version.as_deref().unwrap_or_default()))
        .unwrap_or_default();
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let key = format!(
            "{:016x}",
            fnv(&format!("{}|{}|{backend}|{vmm}|{}", kernel.display(), initrd.display(), boot_id.trim()))
        );
        let cached = self.inner.cache_dir.join(format!("kvm-probe-{key}.json"));
        if let Ok(text) = std::fs::read_to_string(&cached)
            && let Ok((ok, detail)) = serde_json::from_str::<(bool, String)>(&text)
        {
            return if ok { Ok(detail) } else { Err(detail) };
        }
        let kernel = self
            .kernel_for(backend, kernel)
            .await
            .map_err(|e| format!("could not prepare the test guest's kernel: {}", crate::chain(&e)))?;
        // Where the probe fails, what guests do instead.
        let fallback = if host.qemu.is_some() {
            "guests use software emulation"
        } else {
            "and without QEMU there is no software emulation to fall back on: install the qemu-system-x86 \
             package to run machines without KVM"
        };
        let firecracker = self.firecracker_binary();
        let dir = self.inner.cache_dir.join(format!("kvm-probe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("could not make a probe directory: {e}"))?;
        let config = VmConfig {
            name: format!("kvm-probe-{}", std::process::id()),
            dir: dir.clone(),
            kernel,
            initrd,
            cmdline: kernel_cmdline(backend, "hearth.hostname=kvm-probe"),
            disk: None,
            disk_base: None,
            cpus: 1,
            memory_mib: 256,
            nics: vec![],
        };
        let name = config.name.clone();
        let deadline = Duration::from_secs(20);
        let outcome = blocking(move || {
            let started = Instant::now();
            if let Err(e) = vmm::launch(backend, &firecracker, &config) {
                return Ok(Err(format!("{backend} could not start a KVM guest ({}); {fallback}", crate::chain(&e))));
            }
            let files = VmFiles::in_dir(&config.dir);
            let pid = vmm::running_pid(&files, &name);
            let answer = connect_agent(&files, backend, deadline);
            if let Some(pid) = pid {
                vmm::signal(pid, Signal::SIGKILL);
            }
            Ok(match answer {
                Ok(_) => Ok(format!(
                    "a test guest booted under KVM on {backend} in {:.1}s",
                    started.elapsed().as_secs_f64()
                )),
                Err(_) => Err(format!(
                    "/dev/kvm is present, but a test guest did not boot under KVM on {backend} within {}s (nested KVM is often broken); {fallback}. The test guest's console said: {}",
                    deadline.as_secs(),
                    console_tail(&files.console, 2)
                )),
            })
        })
        .await
        .unwrap_or_else(|e| Err(crate::chain(&e)));
        let _ = std::fs::remove_dir_all(&dir);
        let record = match &outcome {
            Ok(d) => (true, d.clone()),
            Err(d) => (false, d.clone()),
        };
        if let Ok(text) = serde_json::to_string(&record) {
            let _ = std::fs::write(&cached, text);
        }
        outcome
    }
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
}
