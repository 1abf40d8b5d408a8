//! Guest kernels: Debian's `linux-image-cloud-amd64`, fetched with the
//! system's package manager on first use and cached in the data dir, and the
//! kernel modules a guest needs, resolved in dependency order.
//!
//! Debian's cloud kernel builds virtio (pci, blk, net, console) and vsock as
//! modules, and its package ships no `modules.dep` (depmod makes it at
//! install time), so dependencies are read from each module's `.modinfo`.
//!
//! Firecracker boots only an uncompressed ELF kernel, while Debian ships a
//! bzImage: [`vmlinux`] takes the compressed kernel out of the bzImage,
//! decompresses it and caches the ELF by the bzImage's content hash.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The modules every guest loads, in no particular order; their
/// dependencies are added and the whole set is ordered by [`resolve_modules`].
/// `virtio_mmio` is for Firecracker, which describes its devices in ACPI
/// (Debian's kernel cannot take them on the command line: it is built
/// without `VIRTIO_MMIO_CMDLINE_DEVICES`); `vmw_vsock_virtio_transport` pulls
/// in `vsock` and `vmw_vsock_virtio_transport_common`, the agent's transport
/// there.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "virtio_net",
    "vmw_vsock_virtio_transport",
];

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

    /// A kernel image could not be turned into an uncompressed ELF.
    #[error(
        "cannot take an uncompressed kernel out of {path}: {reason}; give an ELF vmlinux or a bzImage with --kernel"
    )]
    Vmlinux { path: PathBuf, reason: String },

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

/// Returns an uncompressed ELF kernel for `image`: `image` itself if it is
/// one already, else the kernel taken out of the bzImage and cached in
/// `cache` as `vmlinux-HASH`, keyed by the bzImage's content (so a new kernel
/// at the same path gets a new file). Written to a temporary file and
/// renamed, so a crash never leaves half a kernel to boot.
pub fn vmlinux(cache: &Path, image: &Path) -> Result<PathBuf, Error> {
    use sha2::Digest;
    let data = std::fs::read(image).map_err(io(image))?;
    if data.starts_with(ELF_MAGIC) {
        return Ok(image.to_owned());
    }
    let hash = sha2::Sha256::digest(&data);
    let key: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    let path = cache.join(format!("vmlinux-{key}"));
    if path.is_file() {
        return Ok(path);
    }
    let elf = extract_vmlinux(&data)
        .map_err(|reason| Error::Vmlinux { path: image.to_owned(), reason: reason.into_owned() })?;
    std::fs::create_dir_all(cache).map_err(io(cache))?;
    let tmp = cache.join(format!(".vmlinux-{key}.{}", std::process::id()));
    let written = std::fs::write(&tmp, &elf).and_then(|()| std::fs::File::open(&tmp)?.sync_all());
    if let Err(source) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Io { path: tmp, source });
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(path)
}

const ELF_MAGIC: &[u8] = b"\x7fELF";

/// The uncompressed kernel inside a bzImage.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, Cow<'static, str>> {
    let payload = bzimage_payload(bzimage)?;
    // The kernel's build appends the uncompressed size (32-bit, little
    // endian) to every compressed payload; the streams end before it.
    let (stream, size) = match payload.len().checked_sub(4) {
        Some(at) => (
            &payload[..at],
            u32::from_le_bytes([payload[at], payload[at + 1], payload[at + 2], payload[at + 3]]),
        ),
        None => return Err("its compressed payload is empty".into()),
    };
    let elf = decompress(stream)?;
    if !elf.starts_with(ELF_MAGIC) {
        return Err("its payload does not decompress to an ELF file".into());
    }
    if elf.len() as u32 != size {
        return Err(format!(
            "its payload decompressed to {} bytes, but the bzImage says {size}: the file is damaged",
            elf.len()
        )
        .into());
    }
    Ok(elf)
}

/// The compressed payload a bzImage's setup header points at (boot
/// protocol 2.08 and later: `payload_offset` and `payload_length`).
fn bzimage_payload(image: &[u8]) -> Result<&[u8], &'static str> {
    let u16_at = |o: usize| image.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| image.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return Err("it is neither an ELF file nor a bzImage (no HdrS setup header)");
    }
    let version = u16_at(0x206).ok_or("its setup header is truncated")?;
    if version < 0x0208 {
        return Err("its boot protocol is older than 2.08, which does not locate the payload");
    }
    // 0 setup sectors means 4, for old bootloaders' sake.
    let setup_sects = match image.get(0x1f1).copied().ok_or("its setup header is truncated")? {
        0 => 4,
        n => usize::from(n),
    };
    let offset = u32_at(0x248).ok_or("its setup header is truncated")? as usize;
    let length = u32_at(0x24c).ok_or("its setup header is truncated")? as usize;
    let start = (setup_sects + 1) * 512 + offset;
    image.get(start..start.saturating_add(length)).ok_or("its payload lies beyond the end of the file")
}

/// Decompresses a kernel payload, recognising the compression by its magic.
fn decompress(stream: &[u8]) -> Result<Vec<u8>, Cow<'static, str>> {
    use std::io::Read;
    let mut out = Vec::new();
    let failed = |what: &str, e: &dyn std::fmt::Display| -> Cow<'static, str> {
        format!("its {what} payload is damaged ({e})").into()
    };
    match stream {
        [0x1f, 0x8b, ..] => {
            flate2::read::GzDecoder::new(stream).read_to_end(&mut out).map_err(|e| failed("gzip", &e))?;
        }
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            let mut source = stream;
            ruzstd::decoding::StreamingDecoder::new(&mut source)
                .map_err(|e| failed("zstd", &e))?
                .read_to_end(&mut out)
                .map_err(|e| failed("zstd", &e))?;
        }
        [0x02, 0x21, 0x4c, 0x18, ..] => out = lz4_legacy(stream).map_err(|e| failed("lz4", &e))?,
        [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => out = unxz(stream, "xz")?,
        [0x5d, 0x00, 0x00, ..] => out = unxz(stream, "lzma")?,
        [b'B', b'Z', b'h', ..] => {
            return Err("it is compressed with bzip2, which hearth does not read".into());
        }
        [0x89, b'L', b'Z', b'O', ..] => {
            return Err("it is compressed with lzo, which hearth does not read".into());
        }
        _ => return Err("its payload is compressed in a way hearth does not recognise".into()),
    }
    Ok(out)
}

/// xz and lzma, through the host's `xz` (xz-utils is on every Debian and
/// Ubuntu system; no pure-Rust decoder is among hearth's dependencies).
fn unxz(stream: &[u8], format: &str) -> Result<Vec<u8>, Cow<'static, str>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("xz")
        .args(["--decompress", "--stdout", &format!("--format={format}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("it is compressed with {format}, and `xz` cannot be run ({e}): install xz-utils")
        })?;
    let mut stdin = child.stdin.take().ok_or("xz has no stdin")?;
    let input = stream.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().map_err(|e| format!("xz failed: {e}"))?;
    let fed = feeder.join().map_err(|_| "the thread feeding xz panicked")?;
    if !out.status.success() {
        return Err(format!(
            "its {format} payload is damaged: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    fed.map_err(|e| format!("cannot feed xz: {e}"))?;
    Ok(out.stdout)
}

/// The legacy LZ4 frame (`lz4 -l`) the kernel uses: a magic number, then
/// blocks of at most 8 MiB, each preceded by its compressed size. The magic
/// may repeat between blocks (concatenated frames).
pub fn lz4_legacy(data: &[u8]) -> Result<Vec<u8>, &'static str> {
    const MAGIC: u32 = 0x184c_2102;
    const BLOCK: usize = 8 << 20;
    let u32_at = |o: usize| data.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if u32_at(0) != Some(MAGIC) {
        return Err("no lz4 legacy magic");
    }
    let mut out = Vec::new();
    let mut at = 4;
    while let Some(size) = u32_at(at) {
        at += 4;
        if size == MAGIC {
            continue;
        }
        let block = data.get(at..at + size as usize).ok_or("a block runs past the end")?;
        lz4_block(block, &mut out, BLOCK)?;
        at += size as usize;
    }
    if at != data.len() {
        return Err("stray bytes after the last block");
    }
    Ok(out)
}

/// Appends one decoded LZ4 block (independent of the ones before it) to
/// `out`, refusing to produce more than `limit` bytes.
fn lz4_block(src: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), &'static str> {
    let base = out.len();
    let mut i = 0;
    let length = |i: &mut usize, nibble: u8| -> Result<usize, &'static str> {
        let mut n = usize::from(nibble);
        if nibble == 15 {
            loop {
                let b = *src.get(*i).ok_or("a length runs past the end")?;
                *i += 1;
                n += usize::from(b);
                if b != 255 {
                    break;
                }
            }
        }
        Ok(n)
    };
    loop {
        let token = *src.get(i).ok_or("a block ends without its last literals")?;
        i += 1;
        let literals = length(&mut i, token >> 4)?;
        out.extend_from_slice(src.get(i..i + literals).ok_or("literals run past the end")?);
        i += literals;
        if i == src.len() {
            break;
        }
        let offset = usize::from(u16::from_le_bytes([
            *src.get(i).ok_or("a match has no offset")?,
            *src.get(i + 1).ok_or("a match has no offset")?,
        ]));
        i += 2;
        let mut matched = length(&mut i, token & 15)? + 4;
        if offset == 0 || offset > out.len() - base {
            return Err("a match points before the start of its block");
        }
        if out.len() - base + matched > limit {
            return Err("a block decodes to more than 8 MiB");
        }
        // Overlapping matches repeat the last `offset` bytes.
        while matched > 0 {
            let start = out.len() - offset;
            let n = matched.min(offset);
            out.extend_from_within(start..start + n);
            matched -= n;
        }
    }
    if out.len() - base > limit {
        return Err("a block decodes to more than 8 MiB");
    }
    Ok(())
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

    /// A bzImage-shaped file: one setup sector after the boot sector, the
    /// setup header of boot protocol 2.15, and `payload` (with the size
    /// trailer the kernel's build appends) at `payload_offset` 0x40.
    fn fake_bzimage(compressed: &[u8], uncompressed_len: usize) -> Vec<u8> {
        let mut image = vec![0u8; 2 * 512 + 0x40];
        image[0x1f1] = 1;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        let payload_len = compressed.len() + 4;
        image[0x248..0x24c].copy_from_slice(&0x40u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload_len as u32).to_le_bytes());
        image.extend_from_slice(compressed);
        image.extend_from_slice(&(uncompressed_len as u32).to_le_bytes());
        image.extend_from_slice(b"trailing setup data the payload does not cover");
        image
    }

    /// Something ELF-shaped and compressible, with repeats for matches.
    fn fake_elf() -> Vec<u8> {
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        for i in 0..20_000u32 {
            elf.extend_from_slice(format!("section {} ", i % 97).as_bytes());
        }
        elf
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).expect("gzip");
        enc.finish().expect("gzip")
    }

    #[test]
    fn vmlinux_comes_out_of_a_gzip_bzimage() {
        let elf = fake_elf();
        assert_eq!(extract_vmlinux(&fake_bzimage(&gzip(&elf), elf.len())).as_deref(), Ok(&elf[..]));
    }

    #[test]
    fn vmlinux_comes_out_of_a_zstd_bzimage() {
        let elf = fake_elf();
        let zstd = ruzstd::encoding::compress_to_vec(&elf[..], ruzstd::encoding::CompressionLevel::Fastest);
        assert_eq!(extract_vmlinux(&fake_bzimage(&zstd, elf.len())).as_deref(), Ok(&elf[..]));
    }

    #[test]
    fn vmlinux_comes_out_of_an_lz4_bzimage() {
        // A legacy frame by hand: "\x7fELF" + "ab" as literals, then a match
        // of 10 at offset 2 (overlapping itself: "ababababab"), then literal "!".
        let block = [0x6u8 << 4 | 6, 0x7f, b'E', b'L', b'F', b'a', b'b', 2, 0, 0x10, b'!'];
        let mut frame = 0x184c_2102u32.to_le_bytes().to_vec();
        frame.extend_from_slice(&(block.len() as u32).to_le_bytes());
        frame.extend_from_slice(&block);
        let want = b"\x7fELFabababababab!";
        assert_eq!(extract_vmlinux(&fake_bzimage(&frame, want.len())).as_deref(), Ok(&want[..]));
    }

    /// The host's `lz4 -l` writes the frame the kernel's build does.
    #[test]
    fn lz4_legacy_frames_from_the_lz4_tool_decode() {
        let elf = fake_elf();
        let frame = pipe_through(&["lz4", "-l", "-c", "-9"], &elf)
            .expect("lz4 is not installed or failed; `make setup` installs it");
        assert_eq!(lz4_legacy(&frame).as_deref(), Ok(&elf[..]));
        // Concatenated frames repeat the magic.
        let mut twice = frame.clone();
        twice.extend_from_slice(&frame);
        assert_eq!(lz4_legacy(&twice).map(|d| d.len()), Ok(2 * elf.len()));
        assert!(lz4_legacy(&frame[..frame.len() - 3]).is_err());
    }

    #[test]
    fn vmlinux_comes_out_of_an_xz_bzimage() {
        let elf = fake_elf();
        let xz = pipe_through(&["xz", "-c", "--check=crc32"], &elf)
            .expect("xz is not installed or failed; `make setup` installs xz-utils");
        assert_eq!(extract_vmlinux(&fake_bzimage(&xz, elf.len())).as_deref(), Ok(&elf[..]));
    }

    fn pipe_through(command: &[&str], input: &[u8]) -> Option<Vec<u8>> {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = Command::new(command[0])
            .args(&command[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        child.stdin.take()?.write_all(input).ok()?;
        let out = child.wait_with_output().ok()?;
        out.status.success().then_some(out.stdout)
    }

    #[test]
    fn bad_kernel_images_are_refused_with_the_reason() {
        let elf = fake_elf();
        let good = fake_bzimage(&gzip(&elf), elf.len());
        let reason = |image: &[u8]| extract_vmlinux(image).expect_err("refused").into_owned();
        assert!(reason(b"MZ not a kernel").contains("neither an ELF file nor a bzImage"));
        let mut old = good.clone();
        old[0x206..0x208].copy_from_slice(&0x0206u16.to_le_bytes());
        assert!(reason(&old).contains("older than 2.08"));
        assert!(reason(&good[..good.len() - 100]).contains("beyond the end"));
        assert!(reason(&fake_bzimage(&gzip(&elf), elf.len() + 1)).contains("damaged"));
        assert!(reason(&fake_bzimage(&gzip(b"#!/bin/sh"), 9)).contains("not decompress to an ELF"));
        assert!(reason(&fake_bzimage(b"BZh91AY&SY", 1)).contains("bzip2"));
        assert!(reason(&fake_bzimage(b"????", 1)).contains("does not recognise"));
    }

    #[test]
    fn vmlinux_is_cached_by_content_and_elf_kernels_are_used_as_they_are() {
        let dir = tempfile::tempdir().expect("tempdir");
        let elf = fake_elf();
        let bzimage = dir.path().join("vmlinuz");
        std::fs::write(&bzimage, fake_bzimage(&gzip(&elf), elf.len())).expect("write");
        let cache = dir.path().join("cache");
        let first = vmlinux(&cache, &bzimage).expect("extract");
        assert!(first.starts_with(&cache), "{}", first.display());
        assert_eq!(std::fs::read(&first).expect("read"), elf);
        assert_eq!(vmlinux(&cache, &bzimage).expect("cached"), first);
        // Only the published file: no temporary left behind.
        assert_eq!(std::fs::read_dir(&cache).expect("ls").count(), 1);

        // Another kernel at the same path gets its own file.
        let other = [&elf[..], b"more"].concat();
        std::fs::write(&bzimage, fake_bzimage(&gzip(&other), other.len())).expect("write");
        let second = vmlinux(&cache, &bzimage).expect("extract");
        assert_ne!(second, first);
        assert_eq!(std::fs::read(&second).expect("read"), other);

        let plain = dir.path().join("vmlinux");
        std::fs::write(&plain, &elf).expect("write");
        assert_eq!(vmlinux(&cache, &plain).expect("elf"), plain);

        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"junk").expect("write");
        let error = vmlinux(&cache, &junk).expect_err("junk");
        assert!(error.to_string().contains("--kernel"), "{error}");
    }

    /// Debian's real cloud kernel (LZ4-compressed in bookworm). Run with
    /// `HEARTH_TEST_KERNEL_ROOT=DIR cargo test -p hearth-machines -- --ignored`.
    #[test]
    #[ignore = "needs HEARTH_TEST_KERNEL_ROOT, an unpacked linux-image-cloud-amd64"]
    fn real_cloud_kernel_yields_an_elf_vmlinux() {
        let root = std::env::var_os("HEARTH_TEST_KERNEL_ROOT")
            .expect("set HEARTH_TEST_KERNEL_ROOT to an unpacked linux-image-*-cloud-amd64 package");
        let kernel = Kernel::from_unpacked(Path::new(&root)).expect("kernel");
        let bzimage = std::fs::read(&kernel.vmlinuz).expect("read vmlinuz");
        let elf = extract_vmlinux(&bzimage).expect("extract");
        assert!(elf.starts_with(b"\x7fELF\x02\x01"), "not an ELF64");
        // An x86-64 executable (e_machine 62), much larger than the bzImage.
        assert_eq!(u16::from_le_bytes([elf[0x12], elf[0x13]]), 62);
        assert!(elf.len() > bzimage.len(), "{} <= {}", elf.len(), bzimage.len());
    }
}
