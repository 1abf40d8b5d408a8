//! One module per client subcommand.

pub(crate) mod alert;
pub(crate) mod app;
pub(crate) mod bench;
pub(crate) mod cluster;
pub(crate) mod config;
pub(crate) mod events;
pub(crate) mod fault;
pub(crate) mod func;
pub(crate) mod host;
pub(crate) mod image;
pub(crate) mod kv;
pub(crate) mod lab;
pub(crate) mod machine;
pub(crate) mod metrics;
pub(crate) mod network;
pub(crate) mod service;
pub(crate) mod snapshot;
pub(crate) mod status;
pub(crate) mod token;
pub(crate) mod trigger;
pub(crate) mod ui;
pub(crate) mod workflow;

/// Reads a file a deploy sends, refusing before it reads a byte anything
/// but a regular file (`/dev/zero`, a FIFO) or one over `limit` bytes, and
/// reading at most `limit` bytes even if the file grows meanwhile.
pub(crate) fn read_bounded(path: &std::path::Path, limit: usize, what: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;

    use anyhow::Context as _;

    let not_regular =
        || anyhow::anyhow!("{} is not a regular file: give the path of the {what} itself", path.display());
    // Checked before opening too: opening a FIFO waits for a writer.
    if !std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.is_file() {
        return Err(not_regular());
    }
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let meta = file.metadata().with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    let too_large = |size: u64| {
        anyhow::anyhow!(
            "{} is {size} bytes, over the daemon's limit of {} MiB for a {what}; build in release mode and strip debug info",
            path.display(),
            limit >> 20
        )
    };
    if meta.len() > limit as u64 {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Reads a deploy's component and its manifest, each within its limit.
pub(crate) fn read_deploy(
    component: &std::path::Path,
    limit: usize,
    manifest: Option<&std::path::Path>,
) -> anyhow::Result<(Vec<u8>, Option<String>)> {
    let bytes = read_bounded(component, limit, "component")?;
    let manifest =
        match manifest {
            Some(path) => {
                let text = read_bounded(path, hearth_client::types::MAX_MANIFEST, "manifest")?;
                Some(String::from_utf8(text).map_err(|_| {
                    anyhow::anyhow!("{} is not UTF-8 text: a manifest is TOML", path.display())
                })?)
            }
            None => None,
        };
    Ok((bytes, manifest))
}
