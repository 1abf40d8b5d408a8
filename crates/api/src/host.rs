//! What the host has and uses now, for `GET /v1/status`: CPUs, the load
//! average, memory and the data dir's disk. Read from `/proc` and
//! `statvfs` when asked; parsed by pure functions, tested on samples.

use std::path::Path;

use hearth_client::types::HostResources;

/// Reads the host's resources; `None` where `/proc` cannot be read (the
/// status then shows none rather than wrong figures).
pub fn resources(data_dir: &Path) -> Option<HostResources> {
    let load = load_average(&std::fs::read_to_string("/proc/loadavg").ok()?)?;
    let (memory_total_bytes, memory_available_bytes) =
        memory(&std::fs::read_to_string("/proc/meminfo").ok()?)?;
    let disk = nix::sys::statvfs::statvfs(data_dir).ok()?;
    let block = disk.fragment_size();
    Some(HostResources {
        cpus: std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
        load,
        memory_total_bytes,
        memory_available_bytes,
        disk_total_bytes: disk.blocks().saturating_mul(block),
        disk_available_bytes: disk.blocks_available().saturating_mul(block),
    })
}

/// The three load averages of `/proc/loadavg` (`0.52 0.58 0.59 1/467 12345`).
fn load_average(text: &str) -> Option<[f64; 3]> {
    let mut fields = text.split_ascii_whitespace().map(str::parse::<f64>);
    Some([fields.next()?.ok()?, fields.next()?.ok()?, fields.next()?.ok()?])
}

/// `MemTotal` and `MemAvailable` of `/proc/meminfo`, in bytes.
fn memory(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let kib = rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
            Some(kib.saturating_mul(1024))
        })
    };
    Some((field("MemTotal")?, field("MemAvailable")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_average_is_the_first_three_fields() {
        assert_eq!(load_average("0.52 0.58 0.59 1/467 12345\n"), Some([0.52, 0.58, 0.59]));
        assert_eq!(load_average("0.52 x 0.59"), None);
        assert_eq!(load_average(""), None);
    }

    #[test]
    fn memory_is_mem_total_and_mem_available_in_bytes() {
        let sample =
            "MemTotal:       24570112 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(memory(sample), Some((24_570_112 * 1024, 20_000_000 * 1024)));
        // MemTotalX is not MemTotal; a kernel without MemAvailable gives none.
        assert_eq!(memory("MemTotalX: 1 kB\nMemAvailable: 2 kB\n"), None);
        assert_eq!(memory("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn this_host_has_resources() {
        let r = resources(Path::new("/")).expect("/proc and statvfs are readable here");
        assert!(
            r.cpus >= 1 && r.memory_total_bytes >= r.memory_available_bytes && r.disk_total_bytes > 0,
            "{r:?}"
        );
    }
}
