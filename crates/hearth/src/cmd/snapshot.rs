//! `hearth snapshot`: machines saved to disk.

use hearth_client::Client;

use crate::output::{Table, print_json};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// List snapshots.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Delete snapshots.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub(crate) async fn run(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Ls { json } => {
            let list = client.snapshots().await?;
            if json {
                return print_json(&list);
            }
            let mut table = Table::new(vec!["NAME", "MACHINE", "HOST", "IMAGE", "BACKEND", "MEMORY", "SIZE"]);
            for s in list.snapshots {
                table.row(vec![
                    s.name,
                    s.machine,
                    s.host.unwrap_or_else(|| "-".into()),
                    s.image,
                    s.backend.to_string(),
                    format!("{}M", s.memory_mib),
                    format!("{:.0} MiB", s.size_bytes as f64 / 1048576.0),
                ]);
            }
            print!("{}", table.render());
        }
        Command::Rm { names } => {
            for name in names {
                client.remove_snapshot(&name).await?;
                println!("removed snapshot {name}");
            }
        }
    }
    Ok(())
}
