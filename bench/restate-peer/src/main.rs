//! `restate-peer --port PORT`: the Restate side of `hearth bench workflows`.
//!
//! Serves a Restate SDK endpoint (HTTP/2 without TLS, as Restate expects by
//! default) on 127.0.0.1:PORT with two workflows:
//!
//! - `ThreeSteps`: `run(input)` where `input` is `STEP_URL|KEY`. Three
//!   `ctx.run` steps, step N (1..=3) POSTs the body `KEY` to
//!   `STEP_URL/step/N` with the header `Idempotency-Key: KEY/N`; the result
//!   is the three response bodies joined by `+`. A step whose POST fails
//!   (transport error or a non-2xx status) is retried by Restate.
//! - `Resume`: `run(_input)` awaits the durable promise `go` and returns its
//!   value; the shared handler `go(value)` resolves it.

use std::io::Read as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::OnceLock;

use restate_sdk::prelude::*;

/// One HTTP/1.1 client for every step, so connections to the step server are reused.
fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(ureq::Agent::new_with_defaults)
}

/// POSTs `key` to `{step_url}/step/{n}` and returns the response body.
fn post_step(step_url: &str, key: &str, n: u32) -> Result<String, ureq::Error> {
    let mut response = agent()
        .post(format!("{}/step/{n}", step_url.trim_end_matches('/')))
        .header("Idempotency-Key", format!("{key}/{n}"))
        .send(key)?;
    let mut body = String::new();
    response.body_mut().as_reader().read_to_string(&mut body).map_err(ureq::Error::Io)?;
    Ok(body)
}

struct ThreeSteps;

#[restate_sdk::workflow]
impl ThreeSteps {
    #[handler]
    async fn run(&self, ctx: WorkflowContext<'_>, input: String) -> Result<String, HandlerError> {
        let Some((step_url, key)) = input.split_once('|') else {
            return Err(TerminalError::new("the input is STEP_URL|KEY").into());
        };
        let mut bodies = Vec::with_capacity(3);
        for n in 1..=3u32 {
            let (step_url, key) = (step_url.to_owned(), key.to_owned());
            let body = ctx
                .run(|| async move {
                    let body = tokio::task::spawn_blocking(move || post_step(&step_url, &key, n)).await??;
                    Ok(body)
                })
                .name(format!("step-{n}"))
                .await?;
            bodies.push(body);
        }
        Ok(bodies.join("+"))
    }
}

struct Resume;

#[restate_sdk::workflow]
impl Resume {
    #[handler]
    async fn run(&self, ctx: WorkflowContext<'_>, _input: String) -> Result<String, HandlerError> {
        Ok(ctx.promise::<String>("go").await?)
    }

    #[handler]
    async fn go(&self, ctx: SharedWorkflowContext<'_>, value: String) -> Result<(), HandlerError> {
        ctx.resolve_promise("go", value);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let port: u16 = match (args.next().as_deref(), args.next().map(|p| p.parse())) {
        (Some("--port"), Some(Ok(port))) => port,
        _ => {
            eprintln!("usage: restate-peer --port PORT");
            return ExitCode::from(2);
        }
    };
    let endpoint = Endpoint::builder().bind(ThreeSteps).bind(Resume).build();
    HttpServer::new(endpoint).listen_and_serve(SocketAddr::from(([127, 0, 0, 1], port))).await;
    ExitCode::SUCCESS
}
