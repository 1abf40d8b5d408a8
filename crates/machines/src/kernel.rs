//! Guest kernels: Debian's `linux-image-cloud-amd64`, fetched with the
//! system's package manager on first use and cached in the data dir, and the
//! kernel modules a guest needs, resolved in dependency order.
//!
//! Debian's cloud kernel builds virtio (pci, blk, net, console) and vsock as
//! modules, and its package ships no `modules.dep` (depmod makes it at
//! install time), so dependencies are read from each module's `.modinfo`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The modules every guest loads, in no particular order; their
/// dependencies are added and the whole set is ordered by [`resolve_modules`].
pub const GUEST_MODULES: &[&str] =
    &["virtio_pci", "virtio_blk", "virtio_console", "virtio_net", "vmw_vsock_virtio_transport"];

/// The Debian package that names the current cloud kernel.
const META_PACKAGE: &str = "linux-image-cloud-amd64";

/// What can go wrong while getting a kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A package-manager command failed.
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },

    /// A package-manager command could not be started.
    #[error("cannot run `{command}` (is this a Debian or Ubuntu host?)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },

    /// The extracted package does not look like a kernel package.
    #[error("the kernel package in {0} has no vmlinuz or no modules")]
    BadPackage(PathBuf),

    /// A module the guest needs is not in the kernel's modules.
    #[error("kernel module {name} is not in {dir}")]
    MissingModule { name: String, dir: PathBuf },

    /// A module file could not be parsed.
    #[error("{path} is not a kernel module: {reason}")]
    BadModule { path: PathBuf, reason: &'static str },

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

/// An unpacked kernel package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// The bzImage, bootable by QEMU.
    pub vmlinuz: PathBuf,
    /// `lib/modules/RELEASE` of the package.
    pub modules_dir: PathBuf,
}

impl Kernel {
    /// Finds the kernel in an unpacked package (`boot/`, `lib/modules/`).
    pub fn from_unpacked(root: &Path) -> Result<Kernel, Error> {
        let modules = root.join("lib/modules");
        let release = std::fs::read_dir(&modules)
            .map_err(|_| Error::BadPackage(root.to_owned()))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .ok_or_else(|| Error::BadPackage(root.to_owned()))?;
        let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
        if !vmlinuz.is_file() {
            return Err(Error::BadPackage(root.to_owned()));
        }
        Ok(Kernel { modules_dir: modules.join(&release), release, vmlinuz })
    }
}

/// Returns Debian's cloud kernel from `cache`, downloading and unpacking it
/// with `apt-get download` and `dpkg-deb` the first time.
pub fn debian_cloud_kernel(cache: &Path) -> Result<Kernel, Error> {
    let package = run(Command::new("apt-cache").args(["depends", META_PACKAGE]))?
        .lines()
        .find_map(|l| {
            l.trim().strip_prefix("Depends: ").filter(|p| p.starts_with("linux-image-")).map(str::to_owned)
        })
        .ok_or_else(|| Error::Command {
            command: format!("apt-cache depends {META_PACKAGE}"),
            stderr: "no linux-image dependency found; run `apt-get update` and try again".to_owned(),
        })?;
    let root = cache.join(&package);
    if let Ok(kernel) = Kernel::from_unpacked(&root) {
        return Ok(kernel);
    }
    std::fs::create_dir_all(cache).map_err(io(cache))?;
    // Daemons may share a cache: one downloads, the others wait and reuse.
    let lock_path = cache.join(".lock");
    let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    if let Ok(kernel) = Kernel::from_unpacked(&root) {
        return Ok(kernel);
    }
    let work = cache.join(format!(".{package}.partial"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    tracing::info!(package, "Downloading the guest kernel.");
    run(Command::new("apt-get").args(["download", "-q", &package]).current_dir(&work))?;
    let deb = std::fs::read_dir(&work)
        .map_err(io(&work))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| Error::BadPackage(work.clone()))?;
    let unpacked = work.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    Kernel::from_unpacked(&unpacked)?;
    // Publish atomically: a crash mid-download leaves only the .partial dir.
    std::fs::rename(&unpacked, &root).map_err(io(&root))?;
    let _ = std::fs::remove_dir_all(&work);
    Kernel::from_unpacked(&root)
}

fn run(command: &mut Command) -> Result<String, Error> {
    let text = format!("{command:?}").replace('"', "");
    let out = command.output().map_err(|source| Error::Spawn { command: text.clone(), source })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: text,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Finds `wanted` and everything they depend on under `modules_dir`, and
/// returns their paths ordered so that each comes after its dependencies.
pub fn resolve_modules(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>, Error> {
    let mut index = BTreeMap::new();
    index_modules(modules_dir, &mut index)?;
    let mut ordered = Vec::new();
    let mut done = HashSet::new();
    let mut visiting = HashSet::new();
    for name in wanted {
        visit(name, modules_dir, &index, &mut done, &mut visiting, &mut ordered)?;
    }
    Ok(ordered)
}

fn visit(
    name: &str,
    dir: &Path,
    index: &BTreeMap<String, PathBuf>,
    done: &mut HashSet<String>,
    visiting: &mut HashSet<String>,
    ordered: &mut Vec<PathBuf>,
) -> Result<(), Error> {
    let name = name.replace('-', "_");
    if done.contains(&name) || !visiting.insert(name.clone()) {
        return Ok(());
    }
    let path =
        index.get(&name).ok_or_else(|| Error::MissingModule { name: name.clone(), dir: dir.to_owned() })?;
    let data = std::fs::read(path).map_err(io(path))?;
    for dep in module_depends(&data).map_err(|reason| Error::BadModule { path: path.clone(), reason })? {
        visit(&dep, dir, index, done, visiting, ordered)?;
    }
    visiting.remove(&name);
    done.insert(name);
    ordered.push(path.clone());
    Ok(())
}

fn index_modules(dir: &Path, index: &mut BTreeMap<String, PathBuf>) -> Result<(), Error> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.is_dir() {
            index_modules(&path, index)?;
        } else if let Some(stem) =
            path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ko"))
        {
            index.insert(stem.replace('-', "_"), path);
        }
    }
    Ok(())
}

/// Reads the `depends=` entry of a module's `.modinfo` ELF section.
pub fn module_depends(elf: &[u8]) -> Result<Vec<String>, &'static str> {
    let modinfo = elf_section(elf, ".modinfo")?.ok_or("no .modinfo section")?;
    Ok(modinfo
        .split(|b| *b == 0)
        .filter_map(|entry| entry.strip_prefix(b"depends="))
        .flat_map(|deps| deps.split(|b| *b == b','))
        .filter(|d| !d.is_empty())
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .collect())
}

/// Returns the contents of the named section of a little-endian ELF64 file.
fn elf_section<'a>(elf: &'a [u8], wanted: &str) -> Result<Option<&'a [u8]>, &'static str> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at = |o: usize| {
        elf.get(o..o + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).map(|v| v as usize)
    };
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a little-endian ELF64 file");
    }
    let shoff = u64_at(0x28).ok_or("truncated header")?;
    let shentsize = u16_at(0x3a).ok_or("truncated header")?;
    let shnum = u16_at(0x3c).ok_or("truncated header")?;
    let shstrndx = u16_at(0x3e).ok_or("truncated header")?;
    let section = |i: usize| -> Option<(usize, usize, usize)> {
        let base = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((
            u32::from_le_bytes(elf.get(base..base + 4)?.try_into().ok()?) as usize,
            u64_at(base + 0x18)?,
            u64_at(base + 0x20)?,
        ))
    };
    let (_, str_off, str_size) = section(shstrndx).ok_or("bad section table")?;
    let names = elf.get(str_off..str_off.saturating_add(str_size)).ok_or("bad string table")?;
    for i in 0..shnum {
        let (name_off, off, size) = section(i).ok_or("bad section table")?;
        let name = names.get(name_off..).and_then(|n| n.split(|b| *b == 0).next()).unwrap_or_default();
        if name == wanted.as_bytes() {
            return elf.get(off..off.saturating_add(size)).map(Some).ok_or("section out of bounds");
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with a `.modinfo` section, enough for the parser.
    fn fake_module(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let modinfo_off = elf.len();
        elf.extend_from_slice(modinfo);
        let str_off = elf.len();
        elf.extend_from_slice(shstrtab);
        let shoff = elf.len();
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut s = [0u8; 64];
            s[..4].copy_from_slice(&name.to_le_bytes());
            s[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            s[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&s);
        };
        sh(0, 0, 0);
        sh(1, modinfo_off, modinfo.len());
        sh(10, str_off, shstrtab.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        elf
    }

    #[test]
    fn depends_are_read_from_modinfo() {
        let m = fake_module(b"license=GPL\0depends=virtio,virtio_ring\0name=virtio_blk\0");
        assert_eq!(module_depends(&m), Ok(vec!["virtio".to_owned(), "virtio_ring".to_owned()]));
        assert_eq!(module_depends(&fake_module(b"depends=\0")), Ok(vec![]));
        assert!(module_depends(b"not elf").is_err());
        assert!(module_depends(&fake_module(b"")[..70]).is_err());
    }

    #[test]
    fn modules_are_ordered_after_their_dependencies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("kernel/drivers");
        std::fs::create_dir_all(&d).expect("mkdir");
        for (name, deps) in [("a", "b,c"), ("b", "c"), ("c", ""), ("d", "a")] {
            let info = format!("depends={deps}\0");
            std::fs::write(d.join(format!("{name}.ko")), fake_module(info.as_bytes())).expect("write");
        }
        let order: Vec<String> = resolve_modules(dir.path(), &["d", "b"])
            .expect("resolve")
            .iter()
            .map(|p| p.file_stem().expect("stem").to_string_lossy().into_owned())
            .collect();
        assert_eq!(order, ["c", "b", "a", "d"]);
        assert!(matches!(resolve_modules(dir.path(), &["zz"]), Err(Error::MissingModule { .. })));
    }

    /// Against a real unpacked Debian kernel package. Ignored by default
    /// (every machine test boots through this path anyway); run with
    /// `HEARTH_TEST_KERNEL_ROOT=DIR cargo test -p hearth-machines -- --ignored`.
    #[test]
    #[ignore = "needs HEARTH_TEST_KERNEL_ROOT, an unpacked linux-image-cloud-amd64"]
    fn real_cloud_kernel_modules_resolve() {
        let root = std::env::var_os("HEARTH_TEST_KERNEL_ROOT")
            .expect("set HEARTH_TEST_KERNEL_ROOT to an unpacked linux-image-*-cloud-amd64 package");
        let kernel = Kernel::from_unpacked(Path::new(&root)).expect("kernel");
        let mods = resolve_modules(&kernel.modules_dir, GUEST_MODULES).expect("resolve");
        let names: Vec<String> =
            mods.iter().map(|p| p.file_stem().expect("stem").to_string_lossy().into_owned()).collect();
        let pos =
            |n: &str| names.iter().position(|x| x == n).unwrap_or_else(|| panic!("{n} missing: {names:?}"));
        assert!(pos("virtio_ring") < pos("virtio"));
        assert!(pos("virtio") < pos("virtio_pci"));
        assert!(pos("net_failover") < pos("virtio_net"));
        assert!(pos("vsock") < pos("vmw_vsock_virtio_transport"));
    }
}
