//! `hearth host`: the hosts sharing the store.

use hearth_client::Client;
use hearth_client::types::{Host, HostState};

use crate::output::{Table, print_json};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// List the hosts sharing the store, with their state and what they carry.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show one host.
    Inspect {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Drain a host for maintenance: nothing new is placed on it.
    Drain { name: String },
    /// End a host's draining: new work may go there again.
    Undrain { name: String },
    /// Forget a lost host that will not come back (it must have no machines left).
    Forget { name: String },
}

pub(crate) async fn run(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Ls { json } => {
            let list = client.hosts().await?;
            if json {
                return print_json(&list);
            }
            let mut table = Table::new(vec![
                "NAME",
                "STATE",
                "LEADER",
                "MACHINES",
                "MEMORY",
                "CPUS",
                "BACKENDS",
                "ADDRESSES",
            ]);
            for host in &list.hosts {
                let name = if host.name == list.this {
                    format!("{} (this host)", host.name)
                } else {
                    host.name.clone()
                };
                table.row(vec![
                    name,
                    state(host),
                    if host.leader { "yes".into() } else { String::new() },
                    host.load.machines.to_string(),
                    format!("{}/{} MiB", host.load.memory_mib, host.memory_mib),
                    host.cpus.to_string(),
                    host.backends.join(","),
                    host.addresses.join(" "),
                ]);
            }
            print!("{}", table.render());
        }
        Command::Inspect { name, json } => {
            let host = client.host(&name).await?;
            if json {
                return print_json(&host);
            }
            println!("name        {}", host.name);
            println!("state       {}", state(&host));
            println!("leader      {}", if host.leader { "yes" } else { "no" });
            println!("version     {}", host.version);
            println!("joined      {}", at(host.joined_at * 1000));
            println!("capacity    {} CPUs, {} MiB", host.cpus, host.memory_mib);
            println!(
                "carries     {} machines, {} CPUs, {} MiB",
                host.load.machines, host.load.cpus, host.load.memory_mib
            );
            println!("backends    {}", host.backends.join(", "));
            println!("addresses   {}", host.addresses.join(", "));
        }
        Command::Drain { name } => {
            let host = client.drain_host(&name, true).await?;
            println!(
                "host {} is draining: nothing new is placed on it (`hearth host undrain {}` ends it)",
                host.name, host.name
            );
            if host.load.machines > 0 {
                println!(
                    "its {} machines stay: their disks are on it; stop or remove them to empty it",
                    host.load.machines
                );
            }
        }
        Command::Undrain { name } => {
            let host = client.drain_host(&name, false).await?;
            println!("host {} takes new work again ({})", host.name, host.state);
        }
        Command::Forget { name } => {
            client.forget_host(&name).await?;
            println!("forgot host {name}");
        }
    }
    Ok(())
}

/// The state, and since when a lost host is lost.
fn state(host: &Host) -> String {
    match (host.state, host.lost_at_ms) {
        (HostState::Lost, Some(ms)) => format!("lost since {}", at(ms)),
        (state, _) => state.to_string(),
    }
}

fn at(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time).to_string()
}
