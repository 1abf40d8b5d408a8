//! Growing the root file system to fill its disk, online.
//!
//! A machine's disk can be larger than its image's ext4 (`machine run
//! --disk-size`). After mounting it, PID 1 compares the file system's block
//! count (from its superblock) with the disk's size and, if the disk is
//! larger, asks ext4 to grow with `EXT4_IOC_RESIZE_FS`, as `resize2fs` does
//! on a mounted file system. This needs nothing from the image.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::errno::Errno;
use nix::libc;

/// Where the superblock starts on the device.
const SUPERBLOCK_OFFSET: u64 = 1024;
/// The part of the superblock read here (it is 1024 bytes long).
const SUPERBLOCK_LEN: usize = 1024;
const EXT4_MAGIC: u16 = 0xEF53;
/// `s_feature_incompat`: block counts have a high half.
const INCOMPAT_64BIT: u32 = 0x80;

/// An ext4 file system's size, from its superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FsSize {
    pub(crate) blocks: u64,
    pub(crate) block_size: u64,
}

impl FsSize {
    pub(crate) fn bytes(self) -> u64 {
        self.blocks * self.block_size
    }
}

/// Reads the size out of an ext4 superblock (the 1024 bytes at offset 1024).
pub(crate) fn parse_superblock(sb: &[u8]) -> Result<FsSize, String> {
    let u16_at = |at: usize| sb.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| sb.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if u16_at(0x38) != Some(EXT4_MAGIC) {
        return Err("it is not an ext2/3/4 file system".to_owned());
    }
    let (Some(lo), Some(log_block), Some(incompat)) = (u32_at(0x4), u32_at(0x18), u32_at(0x60)) else {
        return Err("its superblock is cut short".to_owned());
    };
    if log_block > 6 {
        return Err(format!("its block size (2^{}) is not one ext4 has", 10 + log_block));
    }
    let hi = if incompat & INCOMPAT_64BIT != 0 { u32_at(0x150).unwrap_or(0) } else { 0 };
    Ok(FsSize { blocks: (u64::from(hi) << 32) | u64::from(lo), block_size: 1024 << log_block })
}

/// Grows the ext4 file system on `device`, mounted at `mount_point`, to the
/// whole device. Returns the sizes before and after in bytes, or `None` if
/// it already fills the device.
pub(crate) fn grow(device: &str, mount_point: &Path) -> Result<Option<(u64, u64)>, String> {
    let disk = device_bytes(device)?;
    let mut sb = [0u8; SUPERBLOCK_LEN];
    File::open(device)
        .and_then(|f| f.read_exact_at(&mut sb, SUPERBLOCK_OFFSET))
        .map_err(|e| format!("cannot read its superblock: {}", crate::describe(&e)))?;
    let fs = parse_superblock(&sb)?;
    let wanted = disk / fs.block_size;
    if wanted <= fs.blocks {
        return Ok(None);
    }
    let root = File::open(mount_point)
        .map_err(|e| format!("cannot open {}: {}", mount_point.display(), crate::describe(&e)))?;
    resize_fs(&root, wanted).map_err(|e| format!("ext4 refused to grow: {}", e.desc()))?;
    Ok(Some((fs.bytes(), wanted * fs.block_size)))
}

/// The device's size in bytes, from sysfs (`/sys/class/block/NAME/size`
/// counts 512-byte sectors whatever the device's own sector size).
fn device_bytes(device: &str) -> Result<u64, String> {
    let name = Path::new(device).file_name().and_then(|n| n.to_str()).unwrap_or(device);
    let path = format!("/sys/class/block/{name}/size");
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {}", crate::describe(&e)))?;
    let sectors: u64 =
        text.trim().parse().map_err(|_| format!("{path} holds {:?}, not a number", text.trim()))?;
    Ok(sectors * 512)
}

/// `EXT4_IOC_RESIZE_FS`: `_IOW('f', 16, __u64)`, the new block count.
#[allow(unsafe_code)]
fn resize_fs(file: &File, blocks: u64) -> Result<(), Errno> {
    let request = nix::request_code_write!(b'f', 16, std::mem::size_of::<u64>());
    // SAFETY: the ioctl reads one u64 through the pointer, which points at a
    // live local for the duration of the call; the descriptor is open.
    let res = unsafe { libc::ioctl(file.as_raw_fd(), request as _, &blocks as *const u64) };
    Errno::result(res).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A superblock with just the fields read here.
    fn superblock(blocks: u64, log_block: u32, bits64: bool) -> Vec<u8> {
        let mut sb = vec![0u8; SUPERBLOCK_LEN];
        sb[0x4..0x8].copy_from_slice(&(blocks as u32).to_le_bytes());
        sb[0x18..0x1c].copy_from_slice(&log_block.to_le_bytes());
        sb[0x38..0x3a].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        if bits64 {
            sb[0x60..0x64].copy_from_slice(&INCOMPAT_64BIT.to_le_bytes());
            sb[0x150..0x154].copy_from_slice(&((blocks >> 32) as u32).to_le_bytes());
        }
        sb
    }

    #[test]
    fn superblocks_give_their_size() {
        let size = parse_superblock(&superblock(1000, 2, false)).expect("parse");
        assert_eq!(size, FsSize { blocks: 1000, block_size: 4096 });
        assert_eq!(size.bytes(), 4_096_000);
        let big = parse_superblock(&superblock(5 << 32 | 7, 2, true)).expect("parse");
        assert_eq!(big.blocks, 5 << 32 | 7);
        // Without the 64-bit feature the high half is not there to read.
        let mut sb = superblock(9, 0, false);
        sb[0x150] = 1;
        assert_eq!(parse_superblock(&sb).expect("parse").blocks, 9);
    }

    #[test]
    fn other_data_is_not_a_superblock() {
        assert!(parse_superblock(&[0u8; SUPERBLOCK_LEN]).is_err());
        assert!(parse_superblock(&superblock(1, 2, false)[..0x40]).is_err());
        assert!(parse_superblock(&superblock(1, 9, false)).is_err());
    }

    /// The parser agrees with `mkfs.ext4` (e2fsprogs, which `make setup`
    /// installs) on a real file system.
    #[test]
    fn a_real_file_system_reads_as_made() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("fs.ext4");
        std::fs::File::create(&file).and_then(|f| f.set_len(64 << 20)).expect("make file");
        let made = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096"])
            .arg(&file)
            .status()
            .expect("run mkfs.ext4 (e2fsprogs; `make setup` installs it)");
        assert!(made.success(), "mkfs.ext4 failed: {made}");
        let mut sb = [0u8; SUPERBLOCK_LEN];
        File::open(&file).and_then(|f| f.read_exact_at(&mut sb, SUPERBLOCK_OFFSET)).expect("read");
        assert_eq!(parse_superblock(&sb).expect("parse"), FsSize { blocks: 16384, block_size: 4096 });
    }
}
