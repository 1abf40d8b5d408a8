//! The guest's boot payload: an initramfs holding the agent as `/init` and
//! the kernel modules it loads before it can see its disk and its host.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::initramfs;
use crate::kernel::{self, GUEST_MODULES, Kernel};

/// Where the modules list lives in the initramfs (the agent reads it).
const MODULES_LIST: &str = "etc/hearth/modules";

/// What can go wrong while assembling the payload.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kernel(#[from] kernel::Error),

    /// The agent binary is missing or not a static executable.
    #[error("the guest agent at {path} is unusable: {reason}")]
    Agent { path: PathBuf, reason: String },

    #[error("cannot read or write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_owned(), source }
}

/// Returns the initramfs for `kernel` with `agent` as init, building it into
/// `cache` unless an identical one is there (keyed by kernel release, the
/// agent's content and the module list, so a rebuilt agent or a module
/// added to [`GUEST_MODULES`] gets a new initramfs).
pub fn initramfs(cache: &Path, kernel: &Kernel, agent: &Path) -> Result<PathBuf, Error> {
    let agent_bytes = std::fs::read(agent).map_err(|e| Error::Agent {
        path: agent.to_owned(),
        reason: format!("{e}; build it with `make agent`"),
    })?;
    check_static(agent, &agent_bytes)?;
    let key = format!(
        "{}-{:016x}",
        kernel.release,
        fnv1a(&[&agent_bytes, GUEST_MODULES.join(",").as_bytes()].concat())
    );
    let path = cache.join(format!("initrd-{key}.cpio"));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(cache).map_err(io(cache))?;
    let modules = kernel::resolve_modules(&kernel.modules_dir, GUEST_MODULES)?;
    let tmp = cache.join(format!(".initrd-{key}.{}", std::process::id()));
    let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    let mut w = initramfs::Writer::new(std::io::BufWriter::new(file));
    let mut list = String::new();
    let result = (|| -> std::io::Result<()> {
        for dir in ["dev", "proc", "sys", "run", "tmp", "etc", "etc/hearth", "lib", "lib/modules", "newroot"]
        {
            w.dir(dir, 0o755)?;
        }
        w.file("init", 0o755, &agent_bytes)?;
        for module in &modules {
            let name = module.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let mut data = Vec::new();
            std::fs::File::open(module)?.read_to_end(&mut data)?;
            w.file(&format!("lib/modules/{name}"), 0o644, &data)?;
            list.push_str(&format!("/lib/modules/{name}\n"));
        }
        w.file(MODULES_LIST, 0o644, list.as_bytes())?;
        w.finish()?.into_inner().map_err(std::io::IntoInnerError::into_error)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Io { path: tmp, source: e });
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(path)
}

/// Finds the static guest agent: `$HEARTH_AGENT`, else `hearth-agent` next to
/// the running executable, else the musl build in the cargo target dir the
/// executable lives in (for `cargo run` and tests).
pub fn find_agent() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HEARTH_AGENT") {
        return Some(PathBuf::from(path));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let mut candidates = vec![dir.join("hearth-agent")];
    // target/{debug,release}[/deps]/hearth → target/x86_64-unknown-linux-musl/{release,debug}/hearth-agent
    for up in [dir.parent(), dir.parent().and_then(Path::parent)].into_iter().flatten() {
        for profile in ["release", "debug"] {
            candidates.push(up.join("x86_64-unknown-linux-musl").join(profile).join("hearth-agent"));
        }
    }
    candidates
        .into_iter()
        .find(|p| p.is_file() && std::fs::read(p).is_ok_and(|b| check_static(p, &b).is_ok()))
}

/// The agent runs before any library is mounted: it must be static.
fn check_static(path: &Path, elf: &[u8]) -> Result<(), Error> {
    let bad = |reason: &str| Error::Agent { path: path.to_owned(), reason: reason.to_owned() };
    if elf.get(..4) != Some(b"\x7fELF") {
        return Err(bad("not an ELF executable"));
    }
    // PT_INTERP in the program headers means it needs a dynamic loader.
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let phoff =
        elf.get(0x20..0x28).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).map(|v| v as usize);
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, u16_at(0x36), u16_at(0x38)) else {
        return Err(bad("truncated ELF header"));
    };
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let kind = elf.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
        if kind == Some(3) {
            return Err(bad(
                "it is dynamically linked; build it for x86_64-unknown-linux-musl (`make agent`)",
            ));
        }
    }
    Ok(())
}

/// A fast, stable content hash for cache keys (not for security).
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_executables_are_refused_as_agents() {
        let host_binary = std::fs::read("/bin/sh").expect("read /bin/sh");
        let error = check_static(Path::new("/bin/sh"), &host_binary).expect_err("dynamic");
        assert!(error.to_string().contains("unusable"), "{error}");
        assert!(check_static(Path::new("x"), b"#!/bin/sh").is_err());
    }
}
