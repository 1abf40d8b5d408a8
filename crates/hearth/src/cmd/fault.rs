//! `hearth fault`: break the network on purpose, then heal it.

use std::time::Duration;

use hearth_client::Client;
use hearth_client::types::{CreateFault, DelayFault, LossFault, PartitionFault};

use crate::output::{Table, print_json};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Cut machines off from others: `fault partition n1,n2 --from n3,n4`.
    Partition {
        /// One side, comma-separated.
        #[arg(value_delimiter = ',', required = true)]
        machines: Vec<String>,
        /// The other side, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        from: Vec<String>,
        /// Drop only what the --from side sends; the first side can still send.
        #[arg(long)]
        one_way: bool,
        /// Heal by itself after this long, e.g. 30s.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        lasting: Option<Duration>,
    },
    /// Delay traffic to a machine: `fault delay n1 100ms --jitter 10ms`.
    Delay {
        machine: String,
        #[arg(value_parser = humantime::parse_duration)]
        delay: Duration,
        #[arg(long, value_parser = humantime::parse_duration)]
        jitter: Option<Duration>,
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        lasting: Option<Duration>,
    },
    /// Drop a share of the traffic to a machine: `fault loss n1 5%`.
    Loss {
        machine: String,
        #[arg(value_parser = parse_percent)]
        percent: f32,
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        lasting: Option<Duration>,
    },
    /// Heal one fault by id, or all of them.
    Heal { id: Option<String> },
    /// List active faults.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
}

fn parse_percent(text: &str) -> Result<f32, String> {
    let value: f32 =
        text.trim_end_matches('%').parse().map_err(|_| format!("{text:?} is not a percentage like 5%"))?;
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{text:?} is not between 0% and 100%"))
    }
}

pub(crate) async fn run(client: &Client, command: Command) -> anyhow::Result<()> {
    let created = match command {
        Command::Partition { machines, from, one_way, lasting } => {
            client
                .create_fault(&CreateFault {
                    partition: Some(PartitionFault { machines, from, both_ways: !one_way }),
                    for_secs: lasting.map(|d| d.as_secs().max(1)),
                    ..Default::default()
                })
                .await?
        }
        Command::Delay { machine, delay, jitter, lasting } => {
            client
                .create_fault(&CreateFault {
                    delay: Some(DelayFault {
                        machine,
                        delay_ms: delay.as_millis() as u64,
                        jitter_ms: jitter.map(|j| j.as_millis() as u64).unwrap_or(0),
                    }),
                    for_secs: lasting.map(|d| d.as_secs().max(1)),
                    ..Default::default()
                })
                .await?
        }
        Command::Loss { machine, percent, lasting } => {
            client
                .create_fault(&CreateFault {
                    loss: Some(LossFault { machine, percent }),
                    for_secs: lasting.map(|d| d.as_secs().max(1)),
                    ..Default::default()
                })
                .await?
        }
        Command::Heal { id } => {
            let healed = client.heal_faults(id.as_deref()).await?;
            println!("healed {} fault{}", healed.healed, if healed.healed == 1 { "" } else { "s" });
            return Ok(());
        }
        Command::Ls { json } => {
            let list = client.faults().await?;
            if json {
                return print_json(&list);
            }
            let mut table = Table::new(vec!["ID", "FAULT", "HEALS"]);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            for f in list.faults {
                let heals = match f.expires_at {
                    Some(at) => format!("in {}s", at.saturating_sub(now)),
                    None => "when healed".into(),
                };
                table.row(vec![f.id, f.description, heals]);
            }
            print!("{}", table.render());
            return Ok(());
        }
    };
    println!("{}  {}  (heal with `hearth fault heal {}`)", created.id, created.description, created.id);
    Ok(())
}
