//! `hearth`: the daemon (`hearth serve`) and its command-line client.
//!
//! Every subcommand but `serve`, `cluster`, `completions` and `bench store`
//! is a client of the daemon's API: the CLI never does work behind the
//! daemon's back (`cluster` starts daemons, and makes the network they run
//! on).

mod alerting;
mod cluster;
mod cmd;
mod daemon;
mod feed;
mod metrics;
mod output;
mod paths;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A cloud on your own machine.
#[derive(Debug, Parser)]
#[command(name = "hearth", version, about, propagate_version = true)]
struct Cli {
    /// The daemon's data directory [default: $XDG_DATA_HOME/hearth or ~/.local/share/hearth].
    #[arg(long, global = true, env = "HEARTH_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Talk to a daemon on TCP instead of the local socket, e.g. http://127.0.0.1:7070.
    #[arg(long, global = true, env = "HEARTH_HOST", value_name = "URL")]
    host: Option<String>,

    /// The bearer token for --host (`hearth token` on the daemon's host prints it).
    #[arg(long, global = true, env = "HEARTH_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    token: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Serve(daemon::ServeArgs),
    /// Show the daemon's version, data dir, store revision and host capabilities.
    Status(cmd::status::Args),
    /// List changes in the store, or follow them live with -f.
    Events(cmd::events::Args),
    /// Linux microVMs: run, exec, copy, logs, stop, remove.
    #[command(subcommand)]
    Machine(cmd::machine::Command),
    /// Machine images: pull from registries, build from packages.
    #[command(subcommand)]
    Image(cmd::image::Command),
    /// WebAssembly HTTP apps: deploy, list, roll back, logs.
    #[command(subcommand)]
    App(cmd::app::Command),
    /// Handlers from source: paste JavaScript or Python, get a URL.
    #[command(subcommand)]
    Fn(cmd::func::Command),
    /// Durable workflows: deploy, start, signal, show their history.
    #[command(subcommand)]
    Workflow(cmd::workflow::Command),
    /// Private networks: create, list, inspect, remove.
    #[command(subcommand)]
    Network(cmd::network::Command),
    /// Services: machines kept at count, registered instances, health checks, discovery.
    #[command(subcommand)]
    Service(cmd::service::Command),
    /// Break the network on purpose: partitions, delay, loss; then heal.
    #[command(subcommand)]
    Fault(cmd::fault::Command),
    /// Labs: machines and networks from a lab file, up and ready with one command.
    #[command(subcommand)]
    Lab(cmd::lab::Command),
    /// Machine snapshots: list and remove (take them with `machine snapshot`).
    #[command(subcommand)]
    Snapshot(cmd::snapshot::Command),
    /// Alert rules over events, logs and metrics; alerts, silences, and the history of notifications.
    #[command(subcommand)]
    Alert(cmd::alert::Command),
    /// Layered configuration pushed to apps, machines and workflows: values, secrets, schemas, history.
    #[command(subcommand)]
    Config(cmd::config::Command),
    /// hearth's own time series: request rates, errors, latency, health, CPU and memory, charted.
    #[command(subcommand)]
    Metrics(cmd::metrics::Command),
    /// Hosts sharing the store: list them, see which leads, drain one for maintenance.
    #[command(subcommand)]
    Host(cmd::host::Command),
    /// A cluster on this machine: hosts in network namespaces on one etcd, to kill, partition and revive on purpose.
    #[command(subcommand)]
    Cluster(cmd::cluster::Command),
    /// Read and write the user key space of the store.
    #[command(subcommand)]
    Kv(cmd::kv::Command),
    /// Print a one-time sign-in link for the web dashboard (and open it where a browser can); list and revoke its sessions.
    Ui(cmd::ui::Args),
    /// Print the API token that remote clients need (--host).
    Token,
    /// Print a shell completion script, e.g. `hearth completions bash > /etc/bash_completion.d/hearth`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Measure hearth against its peers.
    #[command(subcommand)]
    Bench(cmd::bench::Command),
}

fn main() -> ExitCode {
    quiet_broken_pipe();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            output::print_error(&error);
            ExitCode::FAILURE
        }
    }
}

/// `hearth machine ls | head -1` closes the pipe early: that is not a crash.
/// Any other panic is a bug, reported as one, without a raw backtrace.
fn quiet_broken_pipe() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("Broken pipe") {
            return;
        }
        eprintln!("error: hearth hit a bug: {message}");
        if let Some(location) = info.location() {
            eprintln!("  at {location}");
        }
        eprintln!("hint: please report this with the command you ran; HEARTH_LOG=debug shows more");
    }));
}

/// A command's exit code as the process's (`exec` passes the guest's through).
fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let data_dir = paths::data_dir(cli.data_dir.as_deref())?;
    let client = || paths::client(&data_dir, cli.host.as_deref(), cli.token.clone());
    match cli.command {
        Command::Serve(args) => daemon::serve(&data_dir, args).await?,
        Command::Status(args) => cmd::status::run(&client()?, args).await?,
        Command::Events(args) => cmd::events::run(&client()?, args).await?,
        Command::Kv(command) => cmd::kv::run(&client()?, command).await?,
        Command::Config(command) => cmd::config::run(&client()?, command).await?,
        Command::Alert(command) => cmd::alert::run(&client()?, command).await?,
        Command::Metrics(command) => cmd::metrics::run(&client()?, command).await?,
        Command::Machine(command) => {
            return Ok(exit_code(cmd::machine::run(&client()?, &data_dir, command).await?));
        }
        Command::App(command) => cmd::app::run(&client()?, command).await?,
        Command::Fn(command) => cmd::func::run(client, command).await?,
        Command::Workflow(command) => return Ok(exit_code(cmd::workflow::run(&client()?, command).await?)),
        Command::Network(command) => cmd::network::run(&client()?, command).await?,
        Command::Host(command) => cmd::host::run(&client()?, command).await?,
        Command::Cluster(command) => cmd::cluster::run(&data_dir, command).await?,
        Command::Service(command) => cmd::service::run(&client()?, command).await?,
        Command::Fault(command) => cmd::fault::run(&client()?, command).await?,
        Command::Lab(command) => return Ok(exit_code(cmd::lab::run(&client()?, command).await?)),
        Command::Snapshot(command) => cmd::snapshot::run(&client()?, command).await?,
        Command::Image(command) => return Ok(exit_code(cmd::image::run(&client()?, command).await?)),
        Command::Ui(args) => cmd::ui::run(&client()?, args).await?,
        Command::Token => cmd::token::run(&data_dir)?,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "hearth", &mut std::io::stdout());
        }
        Command::Bench(command) => cmd::bench::run(command, &data_dir, client).await?,
    }
    Ok(ExitCode::SUCCESS)
}
