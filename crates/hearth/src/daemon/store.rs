//! `hearth serve --store`: the embedded store in the data dir, or etcd,
//! and the flags that say how to reach it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use hearth_store::etcd::EtcdStore;
use hearth_store::redb::{Options as StoreOptions, RedbStore};

use crate::paths;

/// Where the state lives.
#[derive(Debug, clap::Args)]
pub(crate) struct StoreArgs {
    /// Where the state lives: `redb`, a file in the data dir, or `etcd://HOST:PORT[,HOST:PORT...]`, an etcd cluster several hosts share.
    #[arg(long = "store", value_name = "redb|etcd://HOST:PORT,...", default_value = "redb", env = "HEARTH_STORE", value_parser = parse_store)]
    location: StoreLocation,

    /// The prefix of every key hearth keeps in etcd, so that several clouds (or other programs) can share one etcd [default: /hearth/]. Not empty; a `/` is added at its end when missing.
    #[arg(long = "store-namespace", value_name = "PREFIX", env = "HEARTH_STORE_NAMESPACE", value_parser = parse_namespace)]
    namespace: Option<String>,

    /// The certificate authority (PEM) that signed etcd's certificates: connects with TLS.
    #[arg(long = "store-ca", value_name = "FILE", env = "HEARTH_STORE_CA")]
    ca: Option<std::path::PathBuf>,

    /// A client certificate (PEM) for etcd, with --store-key: connects with TLS.
    #[arg(long = "store-cert", value_name = "FILE", env = "HEARTH_STORE_CERT", requires = "key")]
    cert: Option<std::path::PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long = "store-key", value_name = "FILE", env = "HEARTH_STORE_KEY", requires = "cert")]
    key: Option<std::path::PathBuf>,

    /// The etcd user, when etcd has authentication on (with --store-password-file).
    #[arg(long = "store-user", value_name = "NAME", env = "HEARTH_STORE_USER", requires = "password_file")]
    user: Option<String>,

    /// A file holding the etcd user's password (its first line).
    #[arg(
        long = "store-password-file",
        value_name = "FILE",
        env = "HEARTH_STORE_PASSWORD_FILE",
        requires = "user"
    )]
    password_file: Option<std::path::PathBuf>,
}

fn parse_namespace(text: &str) -> Result<String, String> {
    hearth_store::etcd::namespace(text).map_err(|e| e.to_string())
}

impl StoreArgs {
    /// The first etcd-only flag given, as `--flag (ENV)`: each is refused
    /// with the embedded store rather than ignored.
    fn etcd_flag_given(&self) -> Option<&'static str> {
        [
            (self.namespace.is_some(), "--store-namespace (HEARTH_STORE_NAMESPACE)"),
            (self.ca.is_some(), "--store-ca (HEARTH_STORE_CA)"),
            (self.cert.is_some(), "--store-cert (HEARTH_STORE_CERT)"),
            (self.key.is_some(), "--store-key (HEARTH_STORE_KEY)"),
            (self.user.is_some(), "--store-user (HEARTH_STORE_USER)"),
            (self.password_file.is_some(), "--store-password-file (HEARTH_STORE_PASSWORD_FILE)"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }
}

/// The password in an etcd password file: its first line, not empty. A file
/// that others than its owner can read is a warning, not an error.
fn read_password(file: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(file).with_context(|| {
        format!("cannot read the etcd password file (--store-password-file) {}", file.display())
    })?;
    let text = String::from_utf8(bytes)
        .with_context(|| format!("the etcd password file {} is not UTF-8 text", file.display()))?;
    let password = text.lines().next().unwrap_or_default();
    if password.is_empty() {
        bail!(
            "the etcd password file {} is empty (its first line is the password); write the etcd user's password in it",
            file.display()
        );
    }
    if let Ok(metadata) = std::fs::metadata(file)
        && metadata.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %file.display(),
            mode = %format!("{:o}", metadata.permissions().mode() & 0o777),
            "The etcd password file can be read by others than its owner; `chmod 600` it."
        );
    }
    Ok(password.to_owned())
}

/// `--store`: the embedded store, or etcd.
#[derive(Debug, Clone)]
enum StoreLocation {
    Redb,
    Etcd(Vec<String>),
}

fn parse_store(text: &str) -> Result<StoreLocation, String> {
    if text == "redb" {
        return Ok(StoreLocation::Redb);
    }
    if !text.starts_with("etcd://") {
        return Err(format!("{text:?}: use redb, or etcd://HOST:PORT[,HOST:PORT...]"));
    }
    let options = hearth_store::etcd::Options::from_url(text).map_err(|e| e.to_string())?;
    Ok(StoreLocation::Etcd(options.endpoints))
}

/// The store the daemon opened.
pub(super) enum OpenedStore {
    Redb(RedbStore),
    Etcd(EtcdStore),
}

impl OpenedStore {
    pub(super) fn store(&self) -> Arc<dyn hearth_store::Store> {
        match self {
            OpenedStore::Redb(redb) => Arc::new(redb.clone()),
            OpenedStore::Etcd(etcd) => Arc::new(etcd.clone()),
        }
    }

    /// What `hearth status` shows: the backend and where it is.
    pub(super) fn describe(&self) -> (hearth_client::types::StoreBackend, String) {
        match self {
            OpenedStore::Redb(redb) => {
                (hearth_client::types::StoreBackend::Redb, redb.path().display().to_string())
            }
            OpenedStore::Etcd(etcd) => (
                hearth_client::types::StoreBackend::Etcd,
                format!("etcd://{} under {}", etcd.endpoints(), etcd.namespace()),
            ),
        }
    }

    pub(super) async fn shutdown(&self) {
        if let OpenedStore::Redb(redb) = self {
            redb.shutdown().await;
        }
    }
}

/// Opens the store `--store` names.
pub(super) async fn open_store(data_dir: &Path, args: StoreArgs) -> anyhow::Result<OpenedStore> {
    let endpoints = match args.location {
        StoreLocation::Redb => {
            if let Some(flag) = args.etcd_flag_given() {
                bail!(
                    "{flag} applies to the store on etcd (--store etcd://HOST:PORT), not to the embedded store; remove it, or give --store etcd://..."
                );
            }
            let redb = RedbStore::open(&data_dir.join(paths::STORE_FILE), StoreOptions::default())
                .with_context(|| format!("cannot open the state store in {}", data_dir.display()))?;
            return Ok(OpenedStore::Redb(redb));
        }
        StoreLocation::Etcd(endpoints) => endpoints,
    };
    let read = |what: &str, path: &Path| {
        std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
    };
    let mut options = hearth_store::etcd::Options::new(endpoints);
    if let Some(namespace) = args.namespace {
        options.namespace = namespace;
    }
    if args.ca.is_some() || args.cert.is_some() {
        options.tls = Some(hearth_store::etcd::Tls {
            ca: args.ca.as_deref().map(|path| read("etcd CA certificate (--store-ca)", path)).transpose()?,
            identity: match (&args.cert, &args.key) {
                (Some(cert), Some(key)) => Some((
                    read("etcd client certificate (--store-cert)", cert)?,
                    read("etcd client key (--store-key)", key)?,
                )),
                _ => None,
            },
        });
    }
    if let (Some(user), Some(file)) = (args.user, &args.password_file) {
        options.user = Some((user, read_password(file)?));
    }
    let etcd = EtcdStore::connect(options).await.context("cannot open the state store on etcd")?;
    tracing::info!(endpoints = etcd.endpoints(), namespace = etcd.namespace(), "The state store is on etcd.");
    Ok(OpenedStore::Etcd(etcd))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::{StoreArgs, StoreLocation, read_password};

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        store: StoreArgs,
    }

    fn parse(args: &[&str]) -> Result<StoreArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied())).map(|cli| cli.store)
    }

    #[test]
    fn etcd_flags_are_named_when_given_with_the_embedded_store() {
        let args = parse(&[]).unwrap();
        assert!(matches!(args.location, StoreLocation::Redb));
        assert_eq!(args.etcd_flag_given(), None);
        for (flags, named) in [
            (&["--store-namespace", "/x/"][..], "--store-namespace"),
            (&["--store-ca", "ca.pem"][..], "--store-ca"),
            (&["--store-cert", "c.pem", "--store-key", "k.pem"][..], "--store-cert"),
            (&["--store-user", "u", "--store-password-file", "p"][..], "--store-user"),
        ] {
            let given = parse(flags).unwrap().etcd_flag_given();
            assert!(given.is_some_and(|flag| flag.starts_with(named)), "{flags:?}: {given:?}");
        }
        let args = parse(&["--store", "etcd://h:1", "--store-namespace", "/a"]).unwrap();
        assert_eq!(args.namespace.as_deref(), Some("/a/"), "a slash is added");
        let error = parse(&["--store", "etcd://h:1", "--store-namespace", ""]).unwrap_err();
        assert!(error.to_string().contains("namespace is empty"), "{error}");
    }

    #[test]
    fn a_password_file_needs_a_password() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "secret\nignored\n").unwrap();
        assert_eq!(read_password(&file).unwrap(), "secret");
        for empty in ["", "\n", "\nsecret\n"] {
            std::fs::write(&file, empty).unwrap();
            let error = read_password(&file).unwrap_err().to_string();
            assert!(error.contains("is empty"), "{empty:?}: {error}");
        }
    }
}
