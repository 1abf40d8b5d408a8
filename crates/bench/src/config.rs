//! `hearth bench config`: from `config set` to the consumer holding the new
//! value, through the running daemon.
//!
//! Three figures, each over `runs` changes made 150 ms apart (config tells
//! consumers of a change at once, then at most every 100 ms), timed from
//! the moment the set is sent (so the write and its fsync count):
//! - the floor: a plain `kv put` until the events stream hands it out, the
//!   least any change pushed through the store can take;
//! - an app: until its next response (`GET /config?key=...` on the kitchen
//!   test guest, asked again and again) shows the new value;
//! - a machine, with `--image`: until the daemon records that the machine's
//!   agent replaced `/run/hearth/config.json` (it answers after the rename
//!   and its fsync).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use hearth_client::Client;
use hearth_client::types::{CreateMachine, DeployApp, Encoding, PutKv, SetConfig};
use http_body_util::{BodyExt, Empty};
use hyper::header::HOST;
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::output::Table;
use crate::{Created, Kind, millis, percentile};

const COMPONENT: &str = "target/apps-guests/wasm32-wasip2/release/kitchen.wasm";
const MANIFEST: &str = "key_value = [\"default\"]\noutbound = [\"http://example.invalid\"]\n";
/// How long one change may take before the run gives up.
const DEADLINE: Duration = Duration::from_secs(30);
/// The pause before each timed change: longer than config's throttle
/// (100 ms), so each change is told at once, as a change a person makes
/// is. Changes closer together are coalesced, one push per 100 ms.
const APART: Duration = Duration::from_millis(150);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Changes to time, for each consumer.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// The app: a component that answers `GET /config?key=K` with the value
    /// (the kitchen test guest; `make bench-config` builds it).
    #[arg(long, value_name = "PATH", default_value = COMPONENT)]
    component: PathBuf,
    /// Also time a machine of this image (it boots once, under software
    /// emulation here: minutes).
    #[arg(long)]
    image: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Figure {
    consumer: &'static str,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    runs: u32,
    figures: Vec<Figure>,
}

fn figure(consumer: &'static str, mut samples: Vec<f64>) -> Figure {
    samples.sort_by(f64::total_cmp);
    Figure {
        consumer,
        p50_ms: percentile(&samples, 50.0),
        p99_ms: percentile(&samples, 99.0),
        max_ms: samples.last().copied().unwrap_or(f64::NAN),
    }
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<()> {
    let component = std::fs::read(&args.component).with_context(|| {
        format!(
            "cannot read the component {}: `make bench-config` builds it, or pass --component",
            args.component.display()
        )
    })?;
    let pid = std::process::id();
    let app = format!("bench-config-{pid}");
    let apps = Created::new(Kind::App);
    let machines = Created::new(Kind::Machine);
    let measure = async {
        let mut figures = vec![figure("store event (floor)", floor(client, args.runs).await?)];
        apps.add(&app);
        figures.push(figure("app's next response", to_app(client, &app, component, args.runs).await?));
        if let Some(image) = &args.image {
            let machine = format!("bench-config-{pid}");
            machines.add(&machine);
            figures
                .push(figure("machine's config.json", to_machine(client, &machine, image, args.runs).await?));
        }
        Ok(Report { runs: args.runs, figures })
    };
    let outcome = tokio::select! {
        report = measure => report,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    apps.remove_all(client).await;
    machines.remove_all(client).await;
    let _ = client.remove_config("bench-config", &format!("app:{app}")).await;
    let report = outcome?;
    if args.json {
        crate::output::print_json(&report)
    } else {
        print!("{}", render(&report));
        Ok(())
    }
}

fn render(report: &Report) -> String {
    let mut table = Table::new(vec!["FROM A CHANGE TO", "P50", "P99", "MAX"]);
    for f in &report.figures {
        table.row(vec![
            f.consumer.to_owned(),
            format!("{:.2} ms", f.p50_ms),
            format!("{:.2} ms", f.p99_ms),
            format!("{:.2} ms", f.max_ms),
        ]);
    }
    format!("config changes, {} each:\n{}", report.runs, table.render())
}

/// `kv put` until the events stream hands the put out.
async fn floor(client: &Client, runs: u32) -> anyhow::Result<Vec<f64>> {
    eprintln!("[1/3] The floor: {runs} kv puts, each until the events stream hands it out ...");
    let key = format!("bench-config-{}", std::process::id());
    let mut events = Box::pin(client.follow_events(None, Some(&format!("kv/{key}"))).await?);
    // One put first, untimed: the stream is open and flowing.
    let put = PutKv { value: "warm".into(), encoding: Encoding::Utf8, lease: None, if_mod_revision: None };
    client.kv_put(&key, &put).await?;
    tokio::time::timeout(DEADLINE, events.next()).await.context("no event within 30 s")?;
    let mut samples = Vec::with_capacity(runs as usize);
    for i in 0..runs {
        let started = Instant::now();
        let put =
            PutKv { value: format!("v{i}"), encoding: Encoding::Utf8, lease: None, if_mod_revision: None };
        client.kv_put(&key, &put).await?;
        let event = tokio::time::timeout(DEADLINE, events.next()).await.context("no event within 30 s")?;
        event.context("the events stream ended")??;
        samples.push(millis(started.elapsed()));
    }
    client.kv_delete(&key).await?;
    Ok(samples)
}

async fn to_app(client: &Client, app: &str, component: Vec<u8>, runs: u32) -> anyhow::Result<Vec<f64>> {
    eprintln!("[2/3] An app: {runs} changes of its scope, each until its next response shows it ...");
    let body = DeployApp {
        component_base64: base64::engine::general_purpose::STANDARD.encode(component),
        manifest: Some(MANIFEST.into()),
        routes: vec![],
    };
    client.deploy_app(app, &body).await?;
    let status = client.status().await?;
    let ingress: SocketAddr =
        status.ingress.as_deref().context("the daemon reports no apps ingress")?.parse()?;
    let host = format!("{app}.localhost");
    let layer = format!("app:{app}");
    let mut samples = Vec::with_capacity(runs as usize);
    for i in 0..runs {
        let want = format!("value-{i}");
        tokio::time::sleep(APART).await;
        let started = Instant::now();
        let set = SetConfig { value: Some(serde_json::Value::String(want.clone())), ..SetConfig::default() };
        client.set_config("bench-config", &layer, &set).await?;
        loop {
            if get(ingress, &host, "/config?key=bench-config").await? == want {
                break;
            }
            if started.elapsed() > DEADLINE {
                bail!("the app did not show {want:?} within 30 s");
            }
        }
        samples.push(millis(started.elapsed()));
    }
    Ok(samples)
}

async fn to_machine(client: &Client, machine: &str, image: &str, runs: u32) -> anyhow::Result<Vec<f64>> {
    eprintln!("[3/3] A machine of {image}: booting it ...");
    let create: CreateMachine = serde_json::from_value(serde_json::json!({"name": machine, "image": image}))?;
    client.create_machine(&create).await?;
    let booted = Instant::now();
    while client.machine(machine).await?.config.is_none() {
        if booted.elapsed() > Duration::from_secs(300) {
            bail!("the machine {machine} did not come up with its config within 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("      {runs} changes of its scope, each until its agent replaced config.json ...");
    let layer = format!("machine:{machine}");
    let mut samples = Vec::with_capacity(runs as usize);
    for i in 0..runs {
        tokio::time::sleep(APART).await;
        let started = Instant::now();
        let set = SetConfig { value: Some(serde_json::json!(i)), ..SetConfig::default() };
        let revision = client.set_config("bench-config", &layer, &set).await?.revision;
        loop {
            let held = client.machine(machine).await?.config.map(|c| c.revision).unwrap_or(0);
            if held >= revision {
                break;
            }
            if started.elapsed() > DEADLINE {
                bail!("the machine did not hold revision {revision} within 30 s (it holds {held})");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.push(millis(started.elapsed()));
    }
    let _ = client.remove_config("bench-config", &layer).await;
    Ok(samples)
}

/// One GET through the ingress: the body.
async fn get(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<String> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let request = hyper::Request::get(path).header(HOST, host).body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    drop(sender);
    conn.abort();
    Ok(String::from_utf8_lossy(&body).into_owned())
}
