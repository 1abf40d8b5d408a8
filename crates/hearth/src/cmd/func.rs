//! `hearth fn`: handlers from source. A JavaScript or Python file becomes
//! an app, built by the daemon (`hearth_apps::source`); everything else
//! (versions, rollback, logs, triggers) is `hearth app`'s.

use std::path::{Path, PathBuf};

use hearth_apps::source::Lang;
use hearth_client::Client;
use hearth_client::types::{CodeTier, DeploySource};

use crate::output::print_json;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Build a JavaScript or Python handler and deploy it as NAME's next
    /// version; a `hearth.toml` beside it is its manifest.
    Deploy {
        name: String,
        /// The handler: a .js module exporting `fetch(request)`, or a .py
        /// module defining `handle(request)`.
        file: PathBuf,
        /// The language, when the file's extension does not say.
        #[arg(long, value_name = "js|py")]
        lang: Option<Lang>,
        /// Also answer at HOST[/PATH] (repeatable); NAME.localhost always works.
        #[arg(long = "route", value_name = "HOST[/PATH]")]
        routes: Vec<String>,
        /// The manifest (default: hearth.toml beside the handler, if there is one).
        #[arg(long, value_name = "PATH")]
        manifest: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Print the code that serves NAME (or that its version N was built from).
    Show {
        name: String,
        #[arg(value_name = "N")]
        number: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Write a starter handler to FILE (default: NAME.js or NAME.py here).
    New {
        name: String,
        #[arg(long, value_name = "js|py")]
        lang: Lang,
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

pub(crate) async fn run(client: impl Fn() -> anyhow::Result<Client>, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Deploy { name, file, lang, routes, manifest, json } => {
            let lang = match lang {
                Some(lang) => lang,
                None => file.file_name().and_then(|n| n.to_str()).and_then(Lang::from_file_name).ok_or_else(|| {
                    anyhow::anyhow!(
                        "{} has no .js or .py extension: rename it, or say its language with --lang js|py",
                        file.display()
                    )
                })?,
            };
            let limit = hearth_client::types::MAX_HANDLER_SOURCE;
            if let Ok(meta) = std::fs::metadata(&file)
                && meta.len() > limit as u64
            {
                anyhow::bail!(
                    "{} is {} bytes, over the limit of {limit} bytes for a handler: move data out of the code \
                     (into key-value or config), or build a component and use `hearth app deploy`",
                    file.display(),
                    meta.len()
                );
            }
            let manifest = manifest.or_else(|| beside(&file));
            let (bytes, manifest) = super::read_deploy(&file, limit, manifest.as_deref())?;
            let source = String::from_utf8(bytes).map_err(|_| {
                anyhow::anyhow!("{} is not UTF-8 text: a handler is source code", file.display())
            })?;
            let client = client()?;
            if !json {
                eprintln!(
                    "building {} into a component on the daemon ({}; a few seconds) ...",
                    file.display(),
                    match lang {
                        Lang::Js => "componentize-js",
                        Lang::Py => "componentize-py",
                    }
                );
            }
            let body = DeploySource { lang: lang.as_str().to_owned(), source, manifest, routes };
            let deployed = client.deploy_source(&name, &body).await?;
            if json {
                return print_json(&deployed);
            }
            let serves = match deployed.tier {
                Some(CodeTier::Optimized) | None => "cranelift's optimized code serves",
                Some(CodeTier::Optimizing) => "winch's code serves until cranelift's is ready",
                Some(CodeTier::Baseline) => "winch's code serves",
            };
            println!(
                "deployed {} version {} in {:.1} s (built from {} in {:.1} s; {serves})",
                deployed.app,
                deployed.version.number,
                deployed.duration_ms / 1000.0,
                file.display(),
                deployed.build_ms.unwrap_or(0.0) / 1000.0
            );
            for url in deployed.urls {
                println!("  {url}");
            }
        }
        Command::Show { name, number, json } => {
            let source = client()?.app_source(&name, number).await?;
            if json {
                return print_json(&source);
            }
            print!("{}", source.source);
            if !source.source.ends_with('\n') {
                println!();
            }
        }
        Command::New { name, lang, out } => {
            hearth_apps::record::validate_name(&name)?;
            let path = out.unwrap_or_else(|| PathBuf::from(format!("{name}.{}", lang.as_str())));
            let mut file =
                std::fs::OpenOptions::new().write(true).create_new(true).open(&path).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        anyhow::anyhow!(
                            "{} exists already: give another file with --out FILE",
                            path.display()
                        )
                    } else {
                        anyhow::anyhow!("cannot write {}: {e}", path.display())
                    }
                })?;
            std::io::Write::write_all(&mut file, hearth_apps::source::starter(lang).as_bytes())?;
            println!("wrote {}; deploy it with:", path.display());
            println!("  hearth fn deploy {name} {}", path.display());
        }
    }
    Ok(())
}

/// `hearth.toml` in the handler's directory, if there is one.
fn beside(file: &Path) -> Option<PathBuf> {
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Some(dir.join("hearth.toml")).filter(|p| p.is_file())
}
