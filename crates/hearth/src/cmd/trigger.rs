//! `hearth app trigger` and `hearth workflow trigger`: cron schedules, store
//! events and webhooks added from the command line, beside those a
//! `hearth.toml` declares (which change only with a redeploy); `hearth
//! machine trigger`: cron schedules and store events that wake a sleeping
//! machine.

use hearth_client::Client;
use hearth_client::types::{TriggerBody, TriggerKind};

use crate::output::{Table, print_json};

/// When a cron or event trigger fires: what every `trigger add` shares.
#[derive(Debug, clap::Args)]
pub(crate) struct When {
    /// A schedule: five fields (minute hour day month weekday), six with
    /// seconds first, or @hourly, @daily, @weekly, @monthly, @yearly.
    #[arg(long, value_name = "SCHEDULE")]
    cron: Option<String>,
    /// The cron schedule's time zone, an IANA name (default UTC).
    #[arg(long, value_name = "TZ", requires = "cron")]
    timezone: Option<String>,
    /// Changes in hearth's store under this key prefix, e.g. kv/jobs/.
    #[arg(long, value_name = "PREFIX")]
    event: Option<String>,
    /// Only these kinds of change: put, delete (default both).
    #[arg(long, value_name = "KINDS", value_delimiter = ',', requires = "event")]
    kinds: Vec<String>,
}

// Parsed once per process: the size of `Add` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Add a trigger: exactly one of --cron, --event, --webhook.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["cron", "event", "webhook"])))]
    Add {
        name: String,
        #[command(flatten)]
        when: When,
        /// A webhook. For an app, a route path (e.g. /github) whose
        /// deliveries are handled once per Idempotency-Key (and must be
        /// signed, with --secret); for a workflow, the last part of
        /// http://hooks.localhost:8080/WORKFLOW/PATH.
        #[arg(long, value_name = "PATH")]
        webhook: Option<String>,
        /// The webhook's shared secret: requests must carry
        /// X-Hearth-Signature: sha256=HMAC-SHA256(body). Used with --webhook
        /// only (so an exported HEARTH_WEBHOOK_SECRET does not get in the
        /// way of --cron or --event).
        #[arg(long, env = "HEARTH_WEBHOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Apps: the route a cron or event trigger POSTs to (default /).
        #[arg(long, value_name = "PATH", conflicts_with = "webhook")]
        path: Option<String>,
        /// Apps: the body a cron trigger POSTs.
        #[arg(long, requires = "cron")]
        body: Option<String>,
        /// Workflows: the input (JSON) of the runs a cron trigger starts.
        #[arg(long, value_name = "JSON", requires = "cron")]
        input: Option<String>,
        /// Workflows: the webhook signals this name to the run ?run=ID
        /// instead of starting a run.
        #[arg(long, requires = "webhook")]
        signal: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List the triggers: the manifest's and those added.
    #[command(alias = "list")]
    Ls {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove triggers added with `trigger add`.
    Rm {
        name: String,
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// `hearth machine trigger`: what wakes a sleeping machine. No webhook: a
/// request to the machine's port wakes it by itself.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum WakeCommand {
    /// Add a trigger that wakes the machine: exactly one of --cron, --event.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["cron", "event"])))]
    Add {
        name: String,
        #[command(flatten)]
        when: When,
        #[arg(long)]
        json: bool,
    },
    /// List the triggers that wake the machine.
    #[command(alias = "list")]
    Ls {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove triggers.
    Rm {
        name: String,
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

impl From<WakeCommand> for Command {
    fn from(command: WakeCommand) -> Command {
        match command {
            WakeCommand::Add { name, when, json } => Command::Add {
                name,
                when,
                webhook: None,
                secret: None,
                path: None,
                body: None,
                input: None,
                signal: None,
                json,
            },
            WakeCommand::Ls { name, json } => Command::Ls { name, json },
            WakeCommand::Rm { name, ids } => Command::Rm { name, ids },
        }
    }
}

/// `target` is `apps` or `workflows`, as in the API's paths.
pub(crate) async fn run(client: &Client, target: &str, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Add {
            name,
            when: When { cron, timezone, event, kinds },
            webhook,
            secret,
            path,
            body,
            input,
            signal,
            json,
        } => {
            // The variable may be exported for webhooks; a flag given
            // with another kind of trigger is a mistake worth saying.
            let from_env = std::env::var("HEARTH_WEBHOOK_SECRET").ok();
            if webhook.is_none() && secret.is_some() && secret != from_env {
                anyhow::bail!("--secret is for --webhook only: a cron or event trigger is not signed");
            }
            let secret = secret.filter(|_| webhook.is_some());
            let mut spec = TriggerBody {
                timezone,
                secret,
                body,
                input,
                signal,
                ..TriggerBody::new(TriggerKind::Webhook)
            };
            if let Some(schedule) = cron {
                spec.kind = TriggerKind::Cron;
                spec.schedule = Some(schedule);
                spec.path = path;
            } else if let Some(prefix) = event {
                spec.kind = TriggerKind::Event;
                spec.prefix = Some(prefix);
                spec.kinds = (!kinds.is_empty()).then_some(kinds);
                spec.path = path;
            } else {
                spec.path = webhook;
            }
            let added = client.add_trigger(target, &name, &spec).await?;
            if json {
                return print_json(&added);
            }
            println!(
                "added the {} trigger {} to {name}: {}",
                added.spec.kind,
                added.id,
                what(target, &added.spec, added.signed)
            );
        }
        Command::Ls { name, json } => {
            let list = client.triggers(target, &name).await?;
            if json {
                return print_json(&list);
            }
            let mut table = Table::new(vec!["ID", "KIND", "SOURCE", "WHAT"]);
            for t in list.triggers {
                table.row(vec![
                    t.id,
                    t.spec.kind.to_string(),
                    t.source.to_string(),
                    what(target, &t.spec, t.signed),
                ]);
            }
            print!("{}", table.render());
        }
        Command::Rm { name, ids } => {
            for id in ids {
                client.remove_trigger(target, &name, &id).await?;
                println!("removed trigger {id} of {name}");
            }
        }
    }
    Ok(())
}

/// One line saying what a trigger of `target` (`apps`, `workflows`,
/// `machines`) does.
fn what(target: &str, t: &TriggerBody, signed: bool) -> String {
    if target != "machines" {
        return describe(t, signed);
    }
    match t.kind {
        TriggerKind::Cron => {
            format!(
                "{} ({}) → wake",
                t.schedule.as_deref().unwrap_or(""),
                t.timezone.as_deref().unwrap_or("UTC")
            )
        }
        TriggerKind::Event => {
            let kinds = kinds_of(t);
            format!("{}* ({kinds}) → wake", t.prefix.as_deref().unwrap_or(""))
        }
        TriggerKind::Webhook => describe(t, signed),
    }
}

/// The kinds of change an event trigger fires on, as said: none given is both.
fn kinds_of(t: &TriggerBody) -> String {
    match t.kinds.as_deref() {
        Some(kinds) if !kinds.is_empty() => kinds.join(", "),
        _ => "put, delete".to_owned(),
    }
}

/// One line saying what a trigger does.
pub(crate) fn describe(t: &TriggerBody, signed: bool) -> String {
    let path = t.path.as_deref().unwrap_or("/");
    let mut text = match t.kind {
        TriggerKind::Cron => {
            let mut s = format!(
                "{} ({})",
                t.schedule.as_deref().unwrap_or(""),
                t.timezone.as_deref().unwrap_or("UTC")
            );
            if t.input.is_none() {
                s.push_str(&format!(" → POST {path}"));
            }
            s
        }
        TriggerKind::Event => {
            let kinds = kinds_of(t);
            let mut s = format!("{}* ({kinds})", t.prefix.as_deref().unwrap_or(""));
            if t.path.is_some() {
                s.push_str(&format!(" → POST {path}"));
            }
            s
        }
        TriggerKind::Webhook => match &t.signal {
            Some(signal) => format!("{path} → signal {signal}"),
            None => path.to_owned(),
        },
    };
    if signed {
        text.push_str(", signed");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kinds: Option<Vec<String>>) -> TriggerBody {
        TriggerBody { prefix: Some("kv/jobs/".into()), kinds, ..TriggerBody::new(TriggerKind::Event) }
    }

    #[test]
    fn an_event_trigger_with_no_kinds_given_fires_on_both() {
        for kinds in [None, Some(vec![])] {
            assert_eq!(describe(&event(kinds.clone()), false), "kv/jobs/* (put, delete)");
            assert_eq!(what("machines", &event(kinds), false), "kv/jobs/* (put, delete) → wake");
        }
        assert_eq!(describe(&event(Some(vec!["put".into()])), false), "kv/jobs/* (put)");
    }

    #[test]
    fn a_machine_trigger_is_a_cron_or_event_trigger_with_nothing_of_apps_or_workflows() {
        let when = When { cron: Some("@daily".into()), timezone: None, event: None, kinds: vec![] };
        let add = WakeCommand::Add { name: "m".into(), when, json: false };
        let Command::Add { webhook, path, body, input, signal, secret, .. } = Command::from(add) else {
            panic!("an add stays an add");
        };
        assert!(webhook.is_none() && path.is_none() && body.is_none() && input.is_none());
        assert!(signal.is_none() && secret.is_none());
    }
}
