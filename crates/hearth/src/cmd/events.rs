//! `hearth events [-f]`.

use std::io::Write as _;

use futures::StreamExt;
use hearth_client::Client;
use hearth_client::types::{ChangeEvent, EventKind, EventsQuery};

use crate::output::{Table, cell};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Keep printing changes as they happen (Ctrl-C to stop).
    #[arg(short, long)]
    follow: bool,
    /// Start at this revision.
    #[arg(long, value_name = "REV")]
    since: Option<u64>,
    /// Only keys with this prefix, e.g. `kv/`.
    #[arg(long)]
    prefix: Option<String>,
    /// At most this many events (without -f).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Print JSON (one object per line with -f).
    #[arg(long)]
    json: bool,
}

const HEADER: [&str; 4] = ["REVISION", "KIND", "KEY", "VALUE"];

fn cells(e: &ChangeEvent) -> Vec<String> {
    let kind = match e.kind {
        EventKind::Put => "put",
        EventKind::Delete => "delete",
    };
    vec![
        e.revision.to_string(),
        kind.to_owned(),
        e.key.clone(),
        e.value.as_deref().map(|v| cell(v, 60)).unwrap_or_default(),
    ]
}

pub(crate) async fn run(client: &Client, args: Args) -> anyhow::Result<()> {
    if !args.follow {
        let list = client
            .events(&EventsQuery {
                follow: None,
                since: args.since,
                prefix: args.prefix,
                limit: Some(args.limit),
            })
            .await?;
        if args.json {
            return crate::output::print_json(&list);
        }
        let mut table = Table::new(HEADER.to_vec());
        for e in &list.events {
            table.row(cells(e));
        }
        print!("{}", table.render());
        return Ok(());
    }
    let mut stream = Box::pin(client.follow_events(args.since, args.prefix.as_deref()).await?);
    let widths = [10usize, 8, 40];
    if !args.json {
        println!("{:<10}{:<8}{:<40}{}", HEADER[0], HEADER[1], HEADER[2], HEADER[3]);
    }
    let mut out = std::io::stdout();
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(event) = next else {
            eprintln!("the daemon closed the event stream (it is shutting down)");
            return Ok(());
        };
        let event = event?;
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&event)?)?;
        } else {
            let c = cells(&event);
            writeln!(
                out,
                "{:<w0$}{:<w1$}{:<w2$}{}",
                c[0],
                c[1],
                c[2],
                c[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            )?;
        }
        out.flush()?;
    }
}
