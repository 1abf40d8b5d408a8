//! `hearth ui`: a one-time sign-in link for the web dashboard, opened in a
//! browser where there is one; and the dashboard's sessions.

use anyhow::{Context as _, bail};
use hearth_client::Client;

use crate::output::{Table, print_json};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// Print the link only; do not start a browser.
    #[arg(long)]
    no_open: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// List the dashboard's sessions.
    Sessions {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a session (its browser must sign in again), or all of them.
    #[command(group = clap::ArgGroup::new("which").required(true))]
    Revoke {
        /// The session's id, as `hearth ui sessions` lists it.
        #[arg(group = "which")]
        id: Option<String>,
        /// Revoke every session.
        #[arg(long, group = "which")]
        all: bool,
    },
}

pub(crate) async fn run(client: &Client, args: Args) -> anyhow::Result<()> {
    match args.command {
        None => sign_in(client, !args.no_open).await,
        Some(Command::Sessions { json }) => {
            let list = client.ui_sessions().await?;
            if json {
                return print_json(&list);
            }
            let mut table = Table::new(vec!["ID", "SIGNED IN", "EXPIRES"]);
            for s in list.sessions {
                table.row(vec![s.id, when(s.created_at_ms), when(s.expires_at_ms)]);
            }
            print!("{}", table.render());
            Ok(())
        }
        Some(Command::Revoke { all: true, .. }) => {
            let revoked = client.ui_revoke_all().await?.revoked;
            println!("revoked {revoked} session{}", if revoked == 1 { "" } else { "s" });
            Ok(())
        }
        Some(Command::Revoke { id: Some(id), .. }) => {
            client.ui_revoke(&id).await?;
            println!("revoked session {id}");
            Ok(())
        }
        Some(Command::Revoke { id: None, all: false }) => {
            bail!("say which session to revoke: `hearth ui revoke ID` (see `hearth ui sessions`) or `--all`")
        }
    }
}

/// Prints the link on stdout (alone, for scripts) and opens it where a
/// graphical session is.
async fn sign_in(client: &Client, open: bool) -> anyhow::Result<()> {
    let code = client.ui_login_code().await.context("cannot get a sign-in link from the daemon")?;
    println!("{}", code.url);
    eprintln!(
        "Open this link to sign in to the dashboard. It works once, within {} s; run `hearth ui` again for another.",
        code.expires_in_secs
    );
    if open && has_display() {
        // Not waited for: some browsers keep xdg-open until they exit.
        match std::process::Command::new("xdg-open")
            .arg(&code.url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Ok(_) => eprintln!("Opening it in your browser."),
            Err(error) => eprintln!("Could not start xdg-open ({error}): open the link yourself."),
        }
    }
    Ok(())
}

/// Whether a browser could show a window here.
fn has_display() -> bool {
    ["DISPLAY", "WAYLAND_DISPLAY"].iter().any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))
}

fn when(at_ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms);
    humantime::format_rfc3339_seconds(at).to_string()
}
