//! Where things live: the data dir, the socket, the token.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hearth_client::{Client, Endpoint};

/// The store file inside the data dir.
pub(crate) const STORE_FILE: &str = "store.redb";
/// The API socket inside the data dir.
pub(crate) const SOCKET_FILE: &str = "hearth.sock";
/// The API token inside the data dir.
pub(crate) const TOKEN_FILE: &str = "token";

/// The data dir: the flag or `HEARTH_DATA_DIR`, else the XDG data home.
pub(crate) fn data_dir(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = flag {
        return Ok(absolute(dir));
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("hearth"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/hearth")),
        None => bail!(
            "cannot choose a data directory: HOME is not set; pass --data-dir DIR or set HEARTH_DATA_DIR"
        ),
    }
}

fn absolute(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned())
}

pub(crate) fn socket(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

pub(crate) fn token(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_FILE)
}

/// A client for the daemon the flags point at.
pub(crate) fn client(data_dir: &Path, host: Option<&str>, token: Option<String>) -> anyhow::Result<Client> {
    let endpoint = match host {
        Some(url) => {
            let endpoint = Endpoint::tcp(url, token)?;
            if matches!(&endpoint, Endpoint::Tcp { token: None, .. }) {
                bail!(
                    "--host needs a token: pass --token TOKEN or set HEARTH_TOKEN (`hearth token` on the daemon's host prints it)"
                );
            }
            endpoint
        }
        None => Endpoint::Unix(socket(data_dir)),
    };
    Ok(Client::new(endpoint))
}

/// Reads the token file.
pub(crate) fn read_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = token(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "there is no token at {} yet: the daemon creates it on first start; run `hearth serve --data-dir {}` once",
            path.display(),
            data_dir.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot read the token at {}", path.display())),
    }
}
