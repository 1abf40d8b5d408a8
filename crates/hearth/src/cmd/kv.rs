//! `hearth kv`: the user key space.

use std::time::Duration;

use anyhow::Context;
use hearth_client::Client;
use hearth_client::types::{Encoding, PutKv};

use crate::output::{Table, cell};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// List keys, optionally under a prefix.
    Ls {
        prefix: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a key's value.
    Get {
        key: String,
        /// Print the whole entry as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a key.
    Put {
        key: String,
        value: String,
        /// Delete the key automatically after this long, e.g. 30s (a new lease).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Write only if the key was last written at this revision (0: only if new).
        #[arg(long, value_name = "REV")]
        if_revision: Option<u64>,
    },
    /// Delete a key.
    Rm { key: String },
}

pub(crate) async fn run(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Ls { prefix, json } => {
            let list = client.kv_list(prefix.as_deref().unwrap_or("")).await?;
            if json {
                return crate::output::print_json(&list);
            }
            let mut table = Table::new(vec!["KEY", "REVISION", "VERSION", "LEASE", "VALUE"]);
            for e in list.entries {
                table.row(vec![
                    e.key,
                    e.mod_revision.to_string(),
                    e.version.to_string(),
                    e.lease.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
                    cell(&e.value, 60),
                ]);
            }
            print!("{}", table.render());
        }
        Command::Get { key, json } => {
            let entry = client.kv_get(&key).await?;
            if json {
                return crate::output::print_json(&entry);
            }
            match entry.encoding {
                Encoding::Utf8 => println!("{}", entry.value),
                Encoding::Base64 => println!("{} (base64)", entry.value),
            }
        }
        Command::Put { key, value, ttl, if_revision } => {
            let lease = match ttl {
                Some(ttl) => {
                    let secs = ttl.as_secs().max(1);
                    Some(client.lease_grant(secs).await.context("cannot grant a lease for --ttl")?.id)
                }
                None => None,
            };
            let result = client
                .kv_put(&key, &PutKv { value, encoding: Encoding::Utf8, lease, if_mod_revision: if_revision })
                .await?;
            println!("revision {}", result.revision);
        }
        Command::Rm { key } => {
            let result = client.kv_delete(&key).await?;
            if result.deleted {
                println!("deleted {key} at revision {}", result.revision);
            } else {
                anyhow::bail!("key {key:?} does not exist (nothing deleted); list keys with `hearth kv ls`");
            }
        }
    }
    Ok(())
}
