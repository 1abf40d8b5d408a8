//! `hearth image`: root file systems for machines.

use std::io::BufRead;

use futures::{Stream, StreamExt};
use hearth_client::types::{BuildImage, ImageInfo, PullImage};
use hearth_client::{Client, Error as ClientError, LongEvent};

use crate::output::{Bar, Table, print_json};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// List images.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Pull an image from an OCI registry, e.g. `debian:bookworm` or `ghcr.io/org/app:1.0`.
    Pull {
        reference: String,
        /// Registry user name (the password is read from stdin).
        #[arg(long)]
        username: Option<String>,
        /// Read the password from stdin.
        #[arg(long, requires = "username")]
        password_stdin: bool,
        #[arg(long)]
        json: bool,
    },
    /// Build an image from distribution packages: `hearth image build debian --packages iproute2,etcd-server`.
    Build {
        /// Only `debian` today.
        distro: String,
        /// The Debian suite.
        #[arg(long, default_value = "bookworm")]
        suite: String,
        /// Extra packages, comma-separated.
        #[arg(long, value_delimiter = ',')]
        packages: Vec<String>,
        /// Name the image (default: debian:SUITE), e.g. `--name etcd:bookworm`.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove an image no machine uses.
    Rm { names: Vec<String> },
}

pub(crate) async fn run(client: &Client, command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Ls { json } => {
            let list = client.images().await?;
            if json {
                print_json(&list)?;
            } else {
                let mut table = Table::new(vec!["NAME", "DIGEST", "SIZE", "SOURCE"]);
                for i in list.images {
                    let hex = i.digest.strip_prefix("sha256:").unwrap_or(&i.digest);
                    table.row(vec![
                        i.name,
                        hex.chars().take(12).collect(),
                        format!("{:.0} MiB", i.size_bytes as f64 / 1048576.0),
                        i.source.to_string(),
                    ]);
                }
                print!("{}", table.render());
            }
        }
        Command::Pull { reference, username, password_stdin, json } => {
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
                Some(line.trim_end_matches(['\n', '\r']).to_owned())
            } else {
                None
            };
            if username.is_some() && password.is_none() {
                anyhow::bail!("--username needs --password-stdin (pipe the password in)");
            }
            let stream = client.pull_image(&PullImage { reference, username, password }).await?;
            finish(follow_long_operation(stream).await?, json)?;
        }
        Command::Build { distro, suite, packages, name, json } => {
            let stream =
                client.build_image(&BuildImage { distro, suite: Some(suite), packages, name }).await?;
            finish(follow_long_operation(stream).await?, json)?;
        }
        Command::Rm { names } => {
            for name in names {
                client.remove_image(&name).await?;
                println!("removed {name}");
            }
        }
    }
    Ok(0)
}

fn finish(image: ImageInfo, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&image);
    }
    println!("{} {} ({:.0} MiB)", image.name, image.digest, image.size_bytes as f64 / 1048576.0);
    Ok(())
}

/// Shows a long operation's progress until it is done.
pub(crate) async fn follow_long_operation(
    stream: impl Stream<Item = Result<LongEvent<ImageInfo>, ClientError>>,
) -> anyhow::Result<ImageInfo> {
    let mut stream = Box::pin(stream);
    let bar = Bar::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(LongEvent::Progress(p)) => bar.update(&p.message, p.done, p.total),
            Ok(LongEvent::Done(image)) => {
                bar.finish();
                return Ok(image);
            }
            Err(e) => {
                bar.finish();
                return Err(e.into());
            }
        }
    }
    bar.finish();
    anyhow::bail!(
        "the daemon ended the operation without a result; check `hearth image ls` and the daemon log"
    )
}
