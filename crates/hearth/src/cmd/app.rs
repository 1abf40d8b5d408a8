//! `hearth app`: WebAssembly HTTP apps, live in well under a second.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use futures::StreamExt;
use hearth_client::Client;
use hearth_client::types::{AppLogLine, CodeTier, DeployApp};

use crate::output::{Table, print_json};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Deploy a component as NAME's next version; a `hearth.toml` beside it is its manifest.
    Deploy {
        name: String,
        /// The component, e.g. target/wasm32-wasip2/release/hello.wasm.
        file: PathBuf,
        /// Also answer at HOST[/PATH] (repeatable); NAME.localhost always works.
        #[arg(long = "route", value_name = "HOST[/PATH]")]
        routes: Vec<String>,
        /// The manifest (default: the nearest hearth.toml from the component's
        /// directory up to its cargo project, if there is one).
        #[arg(long, value_name = "PATH")]
        manifest: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// List apps.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show an app.
    Inspect {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// List an app's versions.
    Versions {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Serve an earlier version again (the previous one unless --to N).
    Rollback {
        name: String,
        #[arg(long, value_name = "N")]
        to: Option<u32>,
    },
    /// Remove apps, their versions, routes and key-value data.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Set a secret the app's manifest declares (the value is read from stdin).
    Secret { name: String, secret: String },
    /// Cron schedules and store events that call the app's routes, and
    /// webhooks (signed routes).
    #[command(subcommand)]
    Trigger(crate::cmd::trigger::Command),
    /// Show the app's output and request log.
    Logs {
        name: String,
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        tail: Option<usize>,
    },
}

pub(crate) async fn run(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Deploy { name, file, routes, manifest, json } => {
            let manifest_path = manifest.or_else(|| find_manifest(&file));
            let (bytes, manifest) =
                super::read_deploy(&file, hearth_client::types::MAX_APP_COMPONENT, manifest_path.as_deref())?;
            let body = DeployApp {
                component_base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
                manifest,
                routes,
            };
            let deployed = client.deploy_app(&name, &body).await?;
            if json {
                return print_json(&deployed);
            }
            println!(
                "deployed {} version {} in {:.0} ms ({})",
                deployed.app,
                deployed.version.number,
                deployed.duration_ms,
                match (deployed.compiled, deployed.tier) {
                    (false, _) => "from the compiled cache",
                    (true, Some(CodeTier::Optimizing)) => {
                        "compiled by winch; cranelift's faster code takes over when ready"
                    }
                    (true, _) => "compiled",
                }
            );
            for url in deployed.urls {
                println!("  {url}");
            }
            // What the manifest's triggers will do, as `workflow deploy` shows.
            if let Ok(list) = client.triggers("apps", &name).await {
                for t in list.triggers.iter().filter(|t| t.source == "manifest") {
                    println!("  {:<8} {}", t.spec.kind, crate::cmd::trigger::describe(&t.spec, t.signed));
                }
            }
        }
        Command::Ls { json } => {
            let list = client.apps().await?;
            if json {
                return print_json(&list);
            }
            let mut table = Table::new(vec!["NAME", "VERSION", "VERSIONS", "URL", "STATUS"]);
            for a in list.apps {
                table.row(vec![
                    a.name,
                    a.active.to_string(),
                    a.version_count.to_string(),
                    a.urls.first().cloned().unwrap_or_default(),
                    a.error.unwrap_or_else(|| {
                        if a.serving.is_some() { "serving".into() } else { "loading".into() }
                    }),
                ]);
            }
            print!("{}", table.render());
        }
        Command::Inspect { name, json } => {
            let app = client.app(&name).await?;
            if json {
                return print_json(&app);
            }
            println!("name        {}", app.summary.name);
            println!("version     {} of {}", app.summary.active, app.versions.len());
            for url in &app.summary.urls {
                println!("url         {url}");
            }
            if let Some(error) = &app.summary.error {
                println!("problem     {error}");
            }
            if let Some(tier) = &app.summary.tier {
                let label = match tier.tier {
                    CodeTier::Baseline => "baseline (winch)",
                    CodeTier::Optimizing => "optimizing (winch serves; cranelift compiling)",
                    CodeTier::Optimized => "optimized (cranelift)",
                };
                println!("tier        {label}");
                if let Some(cache) = &tier.function_cache {
                    println!("functions   {} from the cache, {} compiled", cache.hits, cache.misses);
                }
                if let Some(note) = &tier.note {
                    println!("note        {note}");
                }
            }
            if let Some(manifest) =
                app.versions.iter().find(|v| v.number == app.summary.active).and_then(|v| v.manifest.clone())
            {
                println!(
                    "manifest\n{}",
                    manifest.trim_end().lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
                );
            }
        }
        Command::Versions { name, json } => {
            let app = client.app(&name).await?;
            if json {
                return print_json(&app.versions);
            }
            let mut table = Table::new(vec!["VERSION", "ACTIVE", "SHA256", "SIZE", "FROM", "DEPLOYED"]);
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            for v in &app.versions {
                table.row(vec![
                    v.number.to_string(),
                    if v.number == app.summary.active { "*".into() } else { String::new() },
                    v.sha256.chars().take(12).collect(),
                    format!("{:.1} KiB", v.size as f64 / 1024.0),
                    match v.source.as_deref() {
                        Some("js") => "handler.js".into(),
                        Some("py") => "handler.py".into(),
                        Some(other) => other.to_owned(),
                        None => "component".into(),
                    },
                    format!(
                        "{} ago",
                        humantime::format_duration(std::time::Duration::from_secs(
                            now_ms.saturating_sub(v.created_at) / 1000
                        ))
                    ),
                ]);
            }
            print!("{}", table.render());
        }
        Command::Rollback { name, to } => {
            let v = client.rollback_app(&name, to).await?;
            println!("{name} serves version {} again", v.number);
        }
        Command::Rm { names } => {
            for name in names {
                client.remove_app(&name).await?;
                println!("removed {name}");
            }
        }
        Command::Secret { name, secret } => {
            let mut value = String::new();
            std::io::stdin().read_line(&mut value)?;
            client.set_app_secret(&name, &secret, value.trim_end_matches(['\n', '\r']).to_owned()).await?;
            println!("set secret {secret} of {name}");
        }
        Command::Trigger(command) => crate::cmd::trigger::run(client, "apps", command).await?,
        Command::Logs { name, follow, tail } => {
            let mut out = std::io::stdout();
            if !follow {
                for line in client.app_logs(&name, tail).await?.lines {
                    print_line(&mut out, &line)?;
                }
                return Ok(());
            }
            let mut stream = Box::pin(client.follow_app_logs(&name, tail).await?);
            loop {
                let next = tokio::select! {
                    next = stream.next() => next,
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                };
                match next {
                    Some(line) => print_line(&mut out, &line?)?,
                    None => return Ok(()),
                }
            }
        }
    }
    Ok(())
}

/// The nearest `hearth.toml` at or above the component, not beyond the
/// cargo project it was built in (`target/wasm32-wasip2/release/x.wasm` finds
/// the project's `hearth.toml`).
pub(crate) fn find_manifest(component: &Path) -> Option<PathBuf> {
    let start = std::path::absolute(component).ok()?;
    for dir in start.ancestors().skip(1) {
        let candidate = dir.join("hearth.toml");
        if candidate.is_file() {
            return Some(candidate);
        }
        if dir.join("Cargo.toml").is_file() {
            return None;
        }
    }
    None
}

fn print_line(out: &mut impl std::io::Write, line: &AppLogLine) -> anyhow::Result<()> {
    writeln!(out, "v{:<3} {:<8} {}", line.version, line.stream, line.text)?;
    out.flush()?;
    Ok(())
}
