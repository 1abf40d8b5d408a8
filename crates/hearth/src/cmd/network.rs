//! `hearth network`: private networks.

use hearth_client::Client;
use hearth_client::types::CreateNetwork;

use crate::output::{Table, print_json};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Create a network: a bridge with addresses, DNS and NAT.
    Create {
        name: String,
        /// e.g. 10.250.0.0/24 (default: the next free /24 from 10.200.0.0).
        #[arg(long)]
        subnet: Option<String>,
        /// Keep machines off the outside world (no NAT).
        #[arg(long)]
        no_nat: bool,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show a network and its machines.
    Inspect {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove networks no machine uses.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub(crate) async fn run(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Create { name, subnet, no_nat } => {
            let n = client.create_network(&CreateNetwork { name, subnet, nat: Some(!no_nat) }).await?;
            println!("created network {} ({}, gateway and DNS {})", n.name, n.subnet, n.gateway);
        }
        Command::Ls { json } => {
            let list = client.networks().await?;
            if json {
                return print_json(&list);
            }
            let mut table = Table::new(vec!["NAME", "SUBNET", "GATEWAY", "NAT", "MACHINES", "BRIDGE"]);
            for n in list.networks {
                table.row(vec![
                    n.name,
                    n.subnet,
                    n.gateway,
                    if n.nat { "yes".into() } else { "no".into() },
                    n.machines.len().to_string(),
                    n.bridge,
                ]);
            }
            print!("{}", table.render());
        }
        Command::Inspect { name, json } => {
            let n = client.network(&name).await?;
            if json {
                return print_json(&n);
            }
            println!("name        {}", n.name);
            println!("subnet      {} (gateway and DNS {})", n.subnet, n.gateway);
            println!("nat         {}", if n.nat { "yes" } else { "no" });
            println!("bridge      {}", n.bridge);
            let mut table = Table::new(vec!["MACHINE", "ADDRESS", "NAME"]);
            for m in &n.machines {
                table.row(vec![m.machine.clone(), m.ip.clone(), format!("{}.{}.hearth", m.machine, n.name)]);
            }
            print!("\n{}", table.render());
        }
        Command::Rm { names } => {
            for name in names {
                client.remove_network(&name).await?;
                println!("removed network {name}");
            }
        }
    }
    Ok(())
}
