//! `hearth serve --host-name`: the name this daemon's host goes by among
//! the hosts that share a store.
//!
//! The name is chosen once per data dir and kept in `DATA_DIR/host-name`:
//! machines and their disks are recorded under it, so a data dir whose
//! host changed its name would leave them behind on a host that no longer
//! exists. The first start takes `--host-name`, or else the system's
//! hostname made into a DNS label; later starts read the file, and a
//! `--host-name` that differs from it is refused.

use std::path::Path;

use anyhow::{Context, bail};

/// The file in the data dir that keeps the name.
const FILE: &str = "host-name";

/// Checks a host name: a DNS label (1 to 63 lowercase letters, digits and
/// inner hyphens), so that it can name a host in addresses and tables.
pub(crate) fn parse(text: &str) -> Result<String, String> {
    let ok = (1..=63).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-');
    if ok {
        Ok(text.to_owned())
    } else {
        Err(format!("{text:?}: use 1 to 63 lowercase letters, digits and inner hyphens, e.g. node-1"))
    }
}

/// The system's hostname as a DNS label: lowercased, its first label
/// only, other characters turned into hyphens; `host` if nothing is left.
fn from_system(hostname: &str) -> String {
    let first = hostname.trim().split('.').next().unwrap_or_default().to_ascii_lowercase();
    let label: String = first
        .chars()
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' })
        .take(63)
        .collect();
    let label = label.trim_matches('-');
    if label.is_empty() { "host".to_owned() } else { label.to_owned() }
}

/// The name this data dir's host goes by (see the module documentation),
/// and whether it was chosen now (no name was kept yet).
pub(crate) fn resolve(data_dir: &Path, asked: Option<String>) -> anyhow::Result<(String, bool)> {
    let path = data_dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(kept) => {
            let kept = parse(kept.trim()).map_err(anyhow::Error::msg).with_context(|| {
                format!("the host name in {} is not valid: put a valid one there", path.display())
            })?;
            if let Some(asked) = asked
                && asked != kept
            {
                bail!(
                    "this data dir belongs to host {kept:?}, not {asked:?}: its machines are recorded under that name. Start without --host-name (or with --host-name {kept}), or use another --data-dir"
                );
            }
            Ok((kept, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let name = match asked {
                Some(name) => name,
                None => {
                    from_system(&std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default())
                }
            };
            std::fs::write(&path, format!("{name}\n"))
                .with_context(|| format!("cannot keep the host name in {}", path.display()))?;
            Ok((name, true))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read the host name from {}", path.display())),
    }
}

/// Refuses a name chosen just now for a data dir whose machines are
/// recorded under another: the file that kept the name was lost, and
/// under a new name the daemon would take its own machines for another
/// host's and delete them. `machines` are the store's machine records as
/// (name, host).
pub(crate) fn check_fresh_name(
    data_dir: &Path,
    name: &str,
    machines: &[(String, Option<String>)],
) -> anyhow::Result<()> {
    let theirs = machines.iter().find_map(|(machine, host)| {
        let host = host.as_deref().filter(|h| *h != name)?;
        data_dir.join("machines").join(machine).is_dir().then_some((machine, host))
    });
    if let Some((machine, host)) = theirs {
        let _ = std::fs::remove_file(data_dir.join(FILE));
        bail!(
            "this data dir holds machine {machine:?}, recorded on host {host:?}, but {} was missing, so this daemon would have been {name:?} and taken its machines for another host's: start it with --host-name {host}",
            data_dir.join(FILE).display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_name_is_a_dns_label() {
        assert!(parse("node-1").is_ok());
        assert!(parse("a").is_ok());
        for bad in ["", "-a", "a-", "Node", "a.b", "a_b", &"a".repeat(64)] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn the_system_hostname_becomes_a_label() {
        assert_eq!(from_system("Laptop.example.org\n"), "laptop");
        assert_eq!(from_system("my_box"), "my-box");
        assert_eq!(from_system("..."), "host");
        assert_eq!(from_system(""), "host");
    }

    #[test]
    fn the_first_name_is_kept_and_another_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(resolve(dir.path(), Some("node-1".into())).unwrap(), ("node-1".to_owned(), true));
        assert_eq!(resolve(dir.path(), None).unwrap(), ("node-1".to_owned(), false));
        assert_eq!(resolve(dir.path(), Some("node-1".into())).unwrap(), ("node-1".to_owned(), false));
        let error = format!("{:#}", resolve(dir.path(), Some("node-2".into())).unwrap_err());
        assert!(error.contains("belongs to host \"node-1\""), "{error}");
    }

    #[test]
    fn a_new_name_for_a_data_dir_with_another_hosts_machines_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("machines/web")).unwrap();
        std::fs::write(dir.path().join(FILE), "laptop\n").unwrap();
        let records =
            [("web".to_owned(), Some("node-1".to_owned())), ("db".to_owned(), Some("node-2".to_owned()))];
        let error = format!("{:#}", check_fresh_name(dir.path(), "laptop", &records).unwrap_err());
        assert!(error.contains("--host-name node-1"), "{error}");
        assert!(!dir.path().join(FILE).exists(), "the wrong name is not kept");
        // Machines from before hosts, or of other hosts with no files here, are fine.
        let fine = [("web".to_owned(), None), ("db".to_owned(), Some("node-2".to_owned()))];
        check_fresh_name(dir.path(), "laptop", &fine).unwrap();
        check_fresh_name(dir.path(), "node-1", &records).unwrap();
    }

    #[test]
    fn without_a_name_the_system_hostname_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let (name, _) = resolve(dir.path(), None).unwrap();
        assert!(parse(&name).is_ok(), "{name}");
    }
}
