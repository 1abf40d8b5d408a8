//! `hearth config`: layered configuration, secrets, schemas and history.

use std::io::{IsTerminal, Read as _};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use futures::StreamExt;
use hearth_client::Client;
use hearth_client::types::{
    ConfigChange, ConfigChangeKind, ConfigEvent, ConfigFile, ConfigSchema, ImportConfig, RollbackConfig,
    SetConfig,
};
use serde_json::Value;

use crate::output::{Table, cell};

/// Where a write goes: a scope's layer, or the override layer.
#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    /// The layer: global (the default), app:NAME, service:NAME, machine:NAME or workflow:NAME.
    #[arg(long, default_value = "global", conflicts_with = "override_layer")]
    scope: String,
    /// The override layer, above every scope.
    #[arg(long = "override")]
    override_layer: bool,
}

impl Target {
    fn layer(&self) -> &str {
        if self.override_layer { "override" } else { &self.scope }
    }
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Print the merged config of a scope (all of it, or under KEY).
    Get {
        key: Option<String>,
        /// Whose view: global (the default), app:NAME, service:NAME, machine:NAME or workflow:NAME.
        #[arg(long, default_value = "global")]
        scope: String,
        /// Show each key with the layer (and file) it came from.
        #[arg(long)]
        explain: bool,
        #[arg(long)]
        json: bool,
    },
    /// Set KEY to VALUE (TOML: 5, true, "text", [1, 2], { a = 1 }; one bare word is a string).
    Set {
        key: String,
        /// Not with --secret: a secret is read from stdin or a prompt, never the command line.
        value: Option<String>,
        #[command(flatten)]
        target: Target,
        /// Encrypt the value; it is shown nowhere again, only delivered.
        #[arg(long)]
        secret: bool,
    },
    /// List the values set, layer by layer.
    Ls {
        prefix: Option<String>,
        /// Only this layer: files, global, app:NAME, ..., override.
        #[arg(long)]
        layer: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove KEY (and what is under it) from a layer.
    Rm {
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Replace the files layer with the .toml, .json and .yaml files of DIR (or the files given), in name order.
    Import { paths: Vec<PathBuf> },
    /// Encrypt every value of a TOML, JSON or YAML file (keys stay readable), to commit it; `import` reads it.
    Encrypt {
        file: PathBuf,
        /// Write the file in place instead of printing it.
        #[arg(long, short = 'i')]
        in_place: bool,
        /// Encrypt to this age public key instead of the daemon's.
        #[arg(long)]
        recipient: Option<String>,
    },
    /// The changes to KEY (or all), newest first.
    History {
        key: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// What differs between revision FROM and TO (now by default).
    Diff {
        from: u64,
        to: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Set KEY back to what it was at a revision, as a new change.
    Rollback {
        key: String,
        #[arg(long, value_name = "REV")]
        to: u64,
        #[command(flatten)]
        target: Target,
    },
    /// JSON Schemas that changes under a prefix must match.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Follow changes under PREFIX as they are committed.
    Watch {
        prefix: Option<String>,
        /// From this revision on (inclusive); from the next change by default.
        #[arg(long, value_name = "REV")]
        since: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Print the public key secrets are encrypted to.
    Key,
    /// Make a new key and encrypt every secret again to it.
    Rekey {
        /// Also drop the old keys: what was recorded with them (history, journals) can no longer be read.
        #[arg(long)]
        forget: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum SchemaCommand {
    /// Set the JSON Schema for PREFIX ("" for the whole tree) from FILE.
    Set { prefix: String, file: PathBuf },
    /// Print the schema of PREFIX.
    Get { prefix: String },
    /// List the schemas.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove the schema of PREFIX.
    Rm { prefix: String },
}

pub(crate) async fn run(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Get { key, scope, explain, json } => {
            let prefix = key.unwrap_or_default();
            let view = client.config(&scope, &prefix).await?;
            if json {
                return crate::output::print_json(&if explain {
                    serde_json::to_value(&view)?
                } else {
                    view.value.clone().unwrap_or(Value::Null)
                });
            }
            if explain {
                let mut table = Table::new(vec!["KEY", "VALUE", "LAYER", "SOURCE"]);
                for k in &view.keys {
                    table.row(vec![
                        k.key.clone(),
                        cell(&text(&k.value), 50),
                        k.layer.clone(),
                        k.source.clone().unwrap_or_else(|| "-".into()),
                    ]);
                }
                print!("{}", table.render());
                return Ok(());
            }
            match view.value {
                None => bail!(
                    "nothing is set at {:?} in {}: `hearth config ls` lists what is set",
                    prefix,
                    view.scope
                ),
                Some(Value::Object(map)) => print!("{}", toml_text(&Value::Object(map))?),
                Some(value) => println!("{}", text(&value)),
            }
        }
        Command::Set { key, value, target, secret } => {
            let body = match (value, secret) {
                (Some(_), true) => bail!(
                    "a secret is never given on the command line (shells keep history): \
                     leave VALUE out and type it at the prompt, or pipe it in"
                ),
                (None, true) => SetConfig { text: Some(read_secret(&key)?), value: None, secret: true },
                (Some(text), false) => SetConfig { text: Some(text), value: None, secret: false },
                (None, false) => bail!("give a VALUE (or --secret to be asked for one)"),
            };
            let written = client.set_config(&key, target.layer(), &body).await?;
            println!("set {key} in {} at revision {}", target.layer(), written.revision);
        }
        Command::Ls { prefix, layer, json } => {
            let list = client.config_entries(layer.as_deref(), prefix.as_deref().unwrap_or("")).await?;
            if json {
                return crate::output::print_json(&list);
            }
            let mut table = Table::new(vec!["LAYER", "KEY", "VALUE", "REVISION", "SOURCE"]);
            for e in list.entries {
                table.row(vec![
                    e.layer,
                    e.key,
                    cell(&text(&e.value), 50),
                    e.revision.to_string(),
                    e.source.unwrap_or_else(|| "-".into()),
                ]);
            }
            print!("{}", table.render());
        }
        Command::Rm { key, target } => {
            let written = client.remove_config(&key, target.layer()).await?;
            println!("removed {key} from {} at revision {}", target.layer(), written.revision);
        }
        Command::Import { paths } => {
            let files = read_config_files(&paths)?;
            let count = files.len();
            let written = client.import_config(&ImportConfig { files }).await?;
            println!("imported {count} file(s) into the files layer at revision {}", written.revision);
        }
        Command::Encrypt { file, in_place, recipient } => {
            let recipient = match recipient {
                Some(r) => r,
                None => client.config_key().await?.recipient,
            };
            let recipient = hearth_config::secret::parse_recipient(&recipient)?;
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let out = if file.extension().is_some_and(|e| e == "json") {
                hearth_config::secret::encrypt_json(&text, &recipient)
            } else if file.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                hearth_config::secret::encrypt_yaml(&text, &recipient)
            } else {
                hearth_config::secret::encrypt_toml(&text, &recipient)
            }
            .with_context(|| format!("cannot encrypt {}", file.display()))?;
            if in_place {
                let tmp = file.with_extension("encrypting");
                std::fs::write(&tmp, &out).with_context(|| format!("cannot write {}", tmp.display()))?;
                std::fs::rename(&tmp, &file).with_context(|| format!("cannot replace {}", file.display()))?;
                eprintln!("encrypted every value of {}", file.display());
            } else {
                print!("{out}");
            }
        }
        Command::History { key, limit, json } => {
            let history = client.config_history(key.as_deref().unwrap_or(""), limit).await?;
            if json {
                return crate::output::print_json(&history);
            }
            let mut table = Table::new(vec!["REVISION", "WHEN", "LAYER", "KEY", "BEFORE", "AFTER"]);
            for entry in history.entries {
                for change in entry.changes {
                    let mut row = vec![entry.revision.to_string(), when(entry.at_ms)];
                    row.extend(change_cells(&change));
                    table.row(row);
                }
            }
            print!("{}", table.render());
        }
        Command::Diff { from, to, json } => {
            let diff = client.config_diff(from, to).await?;
            if json {
                return crate::output::print_json(&diff);
            }
            if diff.changes.is_empty() {
                println!("no difference between revisions {} and {}", diff.from, diff.to);
                return Ok(());
            }
            let mut table = Table::new(vec!["LAYER", "KEY", "AT", "NOW"]);
            for change in &diff.changes {
                table.row(change_cells(change));
            }
            println!("revision {} → {}", diff.from, diff.to);
            print!("{}", table.render());
        }
        Command::Rollback { key, to, target } => {
            let body = RollbackConfig { key: key.clone(), layer: Some(target.layer().to_owned()), to };
            let written = client.rollback_config(&body).await?;
            println!(
                "{key} in {} is as it was at revision {to} (revision {})",
                target.layer(),
                written.revision
            );
        }
        Command::Schema(command) => schema(client, command).await?,
        Command::Watch { prefix, since, json } => {
            watch(client, prefix.as_deref().unwrap_or(""), since, json).await?
        }
        Command::Key => {
            let key = client.config_key().await?;
            println!("{}", key.recipient);
            if key.retired > 0 {
                eprintln!("({} retired key(s) kept to read older records)", key.retired);
            }
        }
        Command::Rekey { forget } => {
            let done = client.rekey_config(forget).await?;
            println!("new key {}; {} secret(s) encrypted again", done.recipient, done.reencrypted);
            println!("files made with `config encrypt` for the old key need encrypting again");
        }
    }
    Ok(())
}

async fn schema(client: &Client, command: SchemaCommand) -> anyhow::Result<()> {
    match command {
        SchemaCommand::Set { prefix, file } => {
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let schema: Value = serde_json::from_str(&text).with_context(|| {
                format!("{} is not JSON (a JSON Schema is a JSON document)", file.display())
            })?;
            let written = client.set_config_schema(&ConfigSchema { prefix: prefix.clone(), schema }).await?;
            println!(
                "values under {prefix:?} must match {} from revision {}",
                file.display(),
                written.revision
            );
        }
        SchemaCommand::Get { prefix } => {
            let list = client.config_schemas().await?;
            let Some(found) = list.schemas.into_iter().find(|s| s.prefix == prefix) else {
                bail!("no schema for {prefix:?}: `hearth config schema ls` lists them");
            };
            crate::output::print_json(&found.schema)?;
        }
        SchemaCommand::Ls { json } => {
            let list = client.config_schemas().await?;
            if json {
                return crate::output::print_json(&list);
            }
            let mut table = Table::new(vec!["PREFIX", "SCHEMA"]);
            for s in list.schemas {
                table.row(vec![
                    if s.prefix.is_empty() { "(all)".into() } else { s.prefix },
                    cell(&s.schema.to_string(), 70),
                ]);
            }
            print!("{}", table.render());
        }
        SchemaCommand::Rm { prefix } => {
            let written = client.remove_config_schema(&prefix).await?;
            println!("removed the schema of {prefix:?} at revision {}", written.revision);
        }
    }
    Ok(())
}

async fn watch(client: &Client, prefix: &str, since: Option<u64>, json: bool) -> anyhow::Result<()> {
    let mut since = since;
    loop {
        let mut messages = Box::pin(client.watch_config(prefix, since).await?);
        let mut resume = None;
        while let Some(message) = messages.next().await {
            let message = message?;
            match message.event.as_str() {
                "set" | "removed" => {
                    let event: ConfigEvent = serde_json::from_str(&message.data).with_context(|| {
                        format!("the daemon sent a change this CLI cannot read: {}", message.data)
                    })?;
                    if json {
                        println!("{}", message.data);
                    } else {
                        let value = event.value.as_ref().map(text).unwrap_or_else(|| "(removed)".into());
                        println!("{:>8}  {:<16} {} = {}", event.revision, event.layer, event.key, value);
                    }
                }
                "reset" => {
                    if json {
                        println!("{}", message.data);
                    } else {
                        println!("(history was compacted: everything under {prefix:?} as of now follows)");
                        let list: hearth_client::types::ConfigEntryList =
                            serde_json::from_str(&message.data)?;
                        for e in list.entries {
                            println!("{:>8}  {:<16} {} = {}", e.revision, e.layer, e.key, text(&e.value));
                        }
                    }
                }
                "end" => resume = message.id.and_then(|id| id.parse::<u64>().ok()),
                "error" => bail!("the config watch failed: {}", message.data),
                _ => {}
            }
        }
        match resume {
            Some(through) => since = Some(through + 1),
            None => return Ok(()),
        }
    }
}

/// A value as one line: a string as itself, anything else as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A table as TOML.
fn toml_text(value: &Value) -> anyhow::Result<String> {
    let table: toml::Table = serde_json::from_value(value.clone()).context("the value has no TOML form")?;
    Ok(toml::to_string_pretty(&table)?)
}

fn change_cells(change: &ConfigChange) -> Vec<String> {
    let show = |v: &Option<Value>| v.as_ref().map(|v| cell(&text(v), 30)).unwrap_or_else(|| "-".into());
    let layer = match change.kind {
        ConfigChangeKind::Schema => "(schema)".to_owned(),
        ConfigChangeKind::Value => change.layer.clone().unwrap_or_default(),
    };
    vec![layer, change.key.clone(), show(&change.before), show(&change.after)]
}

fn when(at_ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A secret from stdin: typed at a prompt that does not echo, or piped in
/// (one line; the newline is not part of it).
fn read_secret(key: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let mut value = String::new();
    if stdin.is_terminal() {
        eprint!("value of {key} (not shown): ");
        let _echo_off = EchoOff::new();
        stdin.read_line(&mut value).context("cannot read the secret")?;
        eprintln!();
    } else {
        stdin.lock().read_to_string(&mut value).context("cannot read the secret from stdin")?;
    }
    let value =
        value.strip_suffix('\n').map(|v| v.strip_suffix('\r').unwrap_or(v)).unwrap_or(&value).to_owned();
    if value.is_empty() {
        bail!("the secret is empty: type it at the prompt, or pipe it in");
    }
    Ok(value)
}

/// The terminal's echo off while a secret is typed.
struct EchoOff(Option<nix::sys::termios::Termios>);

impl EchoOff {
    fn new() -> Self {
        use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(&stdin) else { return Self(None) };
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        if tcsetattr(&stdin, SetArg::TCSANOW, &quiet).is_err() {
            return Self(None);
        }
        Self(Some(saved))
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, saved);
        }
    }
}

/// The extensions `config import` takes from a directory.
const CONFIG_FILES: [&str; 4] = ["toml", "json", "yaml", "yml"];

/// The files of `config import`: each path a file, or a directory whose
/// `.toml`, `.json`, `.yaml` and `.yml` files are taken in name order.
fn read_config_files(paths: &[PathBuf]) -> anyhow::Result<Vec<ConfigFile>> {
    if paths.is_empty() {
        bail!("give a directory (or files) to import: `hearth config import ./config`");
    }
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot list {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file() && p.extension().is_some_and(|e| CONFIG_FILES.iter().any(|x| e == *x))
                })
                .collect();
            found.sort();
            if found.is_empty() {
                bail!("{} holds no .toml, .json, .yaml or .yml file", path.display());
            }
            for file in found {
                files.push(read_one(&file)?);
            }
        } else {
            files.push(read_one(path)?);
        }
    }
    Ok(files)
}

fn read_one(path: &Path) -> anyhow::Result<ConfigFile> {
    let bytes = super::read_bounded(path, 1 << 20, "config file")?;
    let text =
        String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", path.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(ConfigFile { name, text })
}
