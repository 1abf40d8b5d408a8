//! What one execution of a run sees: WASI with frozen clocks and seeded
//! randomness, and `hearth:workflow/durable`, whose every call is replayed
//! from the journal or, past its end, done live and recorded.
//!
//! A call that must wait ends the execution: the host returns a [`Stop`] as
//! a trap, which unwinds the guest, and the service writes down what the run
//! waits for. Nothing the guest did after its last recorded call is kept,
//! which is what makes replay exact.

use std::collections::HashSet;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use hearth_config::{Key, Resolved, Scope};
use hearth_routing::Outcome;
use hearth_store::{Compare, CompareOp, CompareTarget, Op, Revision, Txn};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::journal::{Call, Cursor, Divergence, Entry, Recorded};
use crate::now_ms;
use crate::outbound;
use crate::record::{self, Run, Wait, WaitKind};
use crate::service::{StartRequest, Workflows};

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/hearth-workflow",
        world: "hearth:workflow/workflow",
        imports: { default: async | trappable },
        exports: { default: async },
        require_store_data_send: true,
    });
}

use bindings::hearth::workflow::durable::{self, HttpRequest, HttpResponse};

/// Largest activity response body kept in the journal.
const MAX_RESPONSE_BODY: usize = 1 << 20;
/// Guest output kept per execution.
const MAX_OUTPUT: usize = 64 << 10;
/// Memory one instance may use.
const MEMORY_LIMIT: usize = 128 << 20;
/// How long an activity may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an execution ended early. Raised as a trap from a host call.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Stop {
    /// The run must wait; the record says for what.
    #[error("the run waits for {0}")]
    Suspend(Wait),
    #[error(transparent)]
    Diverged(#[from] Divergence),
    /// Someone else changed the run (cancelled it) while it ran.
    #[error("the run changed while it ran: {0}")]
    Interrupted(String),
    /// The journal could not be written; try again later.
    #[error("the journal could not be written: {0}")]
    Store(String),
    /// A recorded result that does not fit the call.
    #[error("the journal is damaged at step {seq}: {call} has the result {outcome}")]
    Corrupt { seq: u32, call: String, outcome: String },
    /// Config could not be read live; try again later.
    #[error("config cannot be read: {0}")]
    Config(String),
    /// A secret the journal holds sealed cannot be opened any more.
    #[error(
        "the secret config-get read at step {seq} cannot be decrypted ({reason}): the config key that sealed it is gone (`hearth config rekey --forget` drops retired keys)"
    )]
    Sealed { seq: u32, reason: String },
}

/// The data of one execution's `Store`.
pub(crate) struct Exec {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: StoreLimits,
    pub(crate) cx: RunCx,
}

/// The run an execution belongs to, and where its replay is.
pub(crate) struct RunCx {
    workflows: Workflows,
    pub(crate) run: Run,
    /// The run record's revision when the execution began: every journal
    /// write checks it, so a cancel stops the execution at its next step.
    run_rev: Revision,
    /// This execution's claim on the run: every journal write checks it
    /// too, so only one executor records the run's steps.
    claim: Vec<u8>,
    pub(crate) cursor: Cursor,
    /// Signals already consumed by a recorded `wait-signal`.
    consumed: HashSet<String>,
    /// Steps recorded live in this execution.
    pub(crate) live_steps: u32,
    /// Epoch ticks the guest has computed since its last durable call.
    pub(crate) ticks: u64,
}

impl Exec {
    pub(crate) fn new(
        workflows: Workflows,
        run: Run,
        run_rev: Revision,
        claim: Vec<u8>,
        journal: Vec<Entry>,
        output: OutputPipe,
    ) -> Exec {
        let consumed = journal
            .iter()
            .filter_map(|e| match &e.outcome {
                Recorded::Signal { key, .. } => Some(key.clone()),
                _ => None,
            })
            .collect();
        let seed = seed(&run.id);
        let wasi = WasiCtx::builder()
            .stdout(output.clone())
            .stderr(output)
            .wall_clock(FrozenClock(run.created_at))
            .monotonic_clock(FrozenClock(0))
            .secure_random(SplitMix(seed))
            .insecure_random(SplitMix(seed ^ 0x5DEE_CE66))
            .insecure_random_seed(u128::from(seed))
            .build();
        Exec {
            wasi,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new().memory_size(MEMORY_LIMIT).instances(16).build(),
            cx: RunCx {
                workflows,
                run,
                run_rev,
                claim,
                cursor: Cursor::new(journal),
                consumed,
                live_steps: 0,
                ticks: 0,
            },
        }
    }
}

impl WasiView for Exec {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

pub(crate) fn add_to_linker(linker: &mut Linker<Exec>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    durable::add_to_linker::<Exec, HasSelf<RunCx>>(linker, |e| &mut e.cx)
}

fn stop(s: Stop) -> wasmtime::Error {
    wasmtime::Error::new(s)
}

impl RunCx {
    /// The recorded result of `call`, or `None` if it is live.
    fn replay(&mut self, call: &Call) -> wasmtime::Result<Option<Recorded>> {
        // The CPU budget is per stretch of computation between calls.
        self.ticks = 0;
        self.cursor.replay(call).map_err(|d| stop(Stop::Diverged(d)))
    }

    fn corrupt(&self, call: &Call, outcome: &Recorded) -> wasmtime::Error {
        stop(Stop::Corrupt {
            seq: self.cursor.seq().saturating_sub(1),
            call: call.to_string(),
            outcome: outcome.to_string(),
        })
    }

    /// Appends a live step to the journal, if the run is still the one this
    /// execution started on and nobody wrote this step before.
    async fn record(&mut self, call: Call, outcome: Recorded) -> wasmtime::Result<()> {
        let seq = self.cursor.seq();
        let entry = Entry { seq, at: now_ms(), call, outcome };
        let key = record::journal_key(&self.run.id, seq);
        let txn = Txn::new()
            .when(Compare::mod_revision(record::run_key(&self.run.id), self.run_rev))
            .when(Compare::new(
                record::claim_key(&self.run.id),
                CompareOp::Equal,
                CompareTarget::Value(self.claim.clone()),
            ))
            .when(Compare::missing(&key))
            .and_then(Op::Put { key, value: record::encode(&entry), lease: None });
        let done = self.workflows.store().txn(txn).await.map_err(|e| stop(Stop::Store(e.to_string())))?;
        if !done.succeeded {
            return Err(stop(Stop::Interrupted(
                "it was cancelled, lost its claim, or another execution recorded this step".into(),
            )));
        }
        self.cursor.push(entry);
        self.live_steps += 1;
        Ok(())
    }

    /// The deadline of the wait this run is already in at `seq`, if it is
    /// waiting there for the same thing.
    fn deadline_at(&self, seq: u32, kind: &WaitKind) -> Option<Option<u64>> {
        self.run.wait.as_ref().filter(|w| w.seq == seq && w.kind == *kind).map(|w| w.deadline)
    }

    fn suspend(&self, kind: WaitKind, deadline: Option<u64>) -> wasmtime::Error {
        stop(Stop::Suspend(Wait { seq: self.cursor.seq(), kind, deadline }))
    }
}

impl durable::Host for RunCx {
    async fn run_id(&mut self) -> wasmtime::Result<String> {
        Ok(self.run.id.clone())
    }

    async fn sleep(&mut self, millis: u64) -> wasmtime::Result<()> {
        let call = Call::Sleep { millis };
        if let Some(outcome) = self.replay(&call)? {
            return match outcome {
                Recorded::Done => Ok(()),
                other => Err(self.corrupt(&call, &other)),
            };
        }
        let now = now_ms();
        let deadline = self
            .deadline_at(self.cursor.seq(), &WaitKind::Timer)
            .flatten()
            .unwrap_or_else(|| now.saturating_add(millis));
        if now >= deadline {
            self.record(call, Recorded::Done).await?;
            return Ok(());
        }
        Err(self.suspend(WaitKind::Timer, Some(deadline)))
    }

    async fn wait_signal(
        &mut self,
        name: String,
        timeout_millis: Option<u64>,
    ) -> wasmtime::Result<Option<String>> {
        let call = Call::WaitSignal { name: name.clone(), timeout_millis };
        if let Some(outcome) = self.replay(&call)? {
            return match outcome {
                Recorded::Signal { data, .. } => Ok(Some(data)),
                Recorded::TimedOut => Ok(None),
                other => Err(self.corrupt(&call, &other)),
            };
        }
        let pending = self
            .workflows
            .pending_signal(&self.run.id, &name, &self.consumed)
            .await
            .map_err(|e| stop(Stop::Store(e.to_string())))?;
        if let Some((key, signal)) = pending {
            self.record(call, Recorded::Signal { key: key.clone(), data: signal.data.clone() }).await?;
            self.consumed.insert(key);
            return Ok(Some(signal.data));
        }
        let kind = WaitKind::Signal { name };
        let now = now_ms();
        let deadline = match self.deadline_at(self.cursor.seq(), &kind) {
            Some(deadline) => deadline,
            None => timeout_millis.map(|t| now.saturating_add(t)),
        };
        if deadline.is_some_and(|d| now >= d) {
            self.record(call, Recorded::TimedOut).await?;
            return Ok(None);
        }
        Err(self.suspend(kind, deadline))
    }

    async fn http_call(&mut self, request: HttpRequest) -> wasmtime::Result<Result<HttpResponse, String>> {
        let call = Call::Http {
            method: request.method.clone(),
            url: request.url.clone(),
            body_sha256: hearth_wasm::sha256_hex(&request.body),
        };
        let outcome = match self.replay(&call)? {
            Some(outcome) => outcome,
            None => {
                let key = format!("{}/{}", self.run.id, self.cursor.seq());
                let agent = self.workflows.http_agent();
                let outcome = match self.to_service(request).await? {
                    Ok((request, instance)) => {
                        let outcome = tokio::task::spawn_blocking(move || activity(&agent, request, &key))
                            .await
                            .unwrap_or_else(|e| Recorded::Error {
                                message: format!("the activity panicked: {e}"),
                            });
                        if let Some((name, address)) = instance {
                            let answered =
                                matches!(outcome, Recorded::Response { status, .. } if status < 500);
                            let how = if answered { Outcome::Answered } else { Outcome::Failed };
                            self.workflows.services().done(&name, address, how);
                        }
                        outcome
                    }
                    Err(message) => Recorded::Error { message },
                };
                self.record(call.clone(), outcome.clone()).await?;
                outcome
            }
        };
        match outcome {
            Recorded::Response { status, headers, body_base64 } => {
                let body = base64::engine::general_purpose::STANDARD
                    .decode(body_base64.as_bytes())
                    .map_err(|_| self.corrupt(&call, &Recorded::Error { message: "bad base64".into() }))?;
                Ok(Ok(HttpResponse { status, headers, body }))
            }
            Recorded::Error { message } => Ok(Err(message)),
            other => Err(self.corrupt(&call, &other)),
        }
    }

    async fn now(&mut self) -> wasmtime::Result<u64> {
        self.number(Call::Now, now_ms).await
    }

    async fn random(&mut self) -> wasmtime::Result<u64> {
        self.number(Call::Random, rand::random::<u64>).await
    }

    async fn config_get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        let call = Call::ConfigGet { key: key.clone() };
        if let Some(outcome) = self.replay(&call)? {
            return match outcome {
                Recorded::Config { value } => Ok(value),
                Recorded::Secret { sealed } => self.open(&call, &sealed).map(Some),
                other => Err(self.corrupt(&call, &other)),
            };
        }
        let scope = Scope::Workflow(self.run.workflow.clone());
        let resolved = match self.workflows.config().resolve(&scope, None).await {
            Ok(resolved) => resolved,
            Err(hearth_config::Error::Store(e)) => return Err(stop(Stop::Store(e.to_string()))),
            Err(e) => return Err(stop(Stop::Config(hearth_store::chain(&e)))),
        };
        let (value, secret) = lookup(&resolved, &key);
        let outcome = match &value {
            Some(text) if secret => {
                let sealed = self
                    .workflows
                    .config()
                    .seal(&serde_json::Value::String(text.clone()))
                    .map_err(|e| stop(Stop::Config(hearth_store::chain(&e))))?;
                Recorded::Secret { sealed }
            }
            _ => Recorded::Config { value: value.clone() },
        };
        self.record(call, outcome).await?;
        Ok(value)
    }

    async fn log(&mut self, message: String) -> wasmtime::Result<()> {
        let call = Call::Log { message: message.clone() };
        match self.replay(&call)? {
            Some(Recorded::Done) => Ok(()),
            Some(other) => Err(self.corrupt(&call, &other)),
            None => {
                self.record(call, Recorded::Done).await?;
                self.workflows.tap(&self.run.workflow, &message);
                Ok(())
            }
        }
    }

    async fn start_child(
        &mut self,
        workflow: String,
        input: String,
    ) -> wasmtime::Result<Result<String, String>> {
        let call = Call::StartChild { workflow: workflow.clone(), input: input.clone() };
        let outcome = match self.replay(&call)? {
            Some(outcome) => outcome,
            None => {
                let id = format!("{}.{}", self.run.id, self.cursor.seq());
                let request = StartRequest {
                    workflow,
                    input,
                    id: Some(id),
                    started_by: "child".into(),
                    parent: Some(self.run.id.clone()),
                };
                let outcome = match self.workflows.start(request).await {
                    Ok(started) => Recorded::Child { id: started.run.id },
                    Err(e @ (crate::Error::Store(_) | crate::Error::Contended(_))) => {
                        return Err(stop(Stop::Store(e.to_string())));
                    }
                    Err(e) => Recorded::Error { message: e.to_string() },
                };
                self.record(call.clone(), outcome.clone()).await?;
                outcome
            }
        };
        match outcome {
            Recorded::Child { id } => Ok(Ok(id)),
            Recorded::Error { message } => Ok(Err(message)),
            other => Err(self.corrupt(&call, &other)),
        }
    }

    async fn wait_child(
        &mut self,
        id: String,
        timeout_millis: Option<u64>,
    ) -> wasmtime::Result<Option<Result<String, String>>> {
        let call = Call::WaitChild { id: id.clone(), timeout_millis };
        let outcome = match self.replay(&call)? {
            Some(outcome) => outcome,
            None => {
                let child = self.workflows.get_run(&id).await;
                let outcome = match child {
                    Ok(child) if child.parent.as_deref() != Some(&self.run.id) => Recorded::ChildEnded {
                        output: None,
                        error: Some(format!(
                            "run {id} is not a child of this run; start it with start-child"
                        )),
                    },
                    Ok(child) if child.status.is_terminal() => Recorded::ChildEnded {
                        output: child.output.filter(|_| child.status == crate::Status::Completed),
                        error: (child.status != crate::Status::Completed).then(|| {
                            child.error.unwrap_or_else(|| format!("the child was {}", child.status.as_str()))
                        }),
                    },
                    Ok(_) => {
                        let kind = WaitKind::Child { id };
                        let now = now_ms();
                        let deadline = match self.deadline_at(self.cursor.seq(), &kind) {
                            Some(deadline) => deadline,
                            None => timeout_millis.map(|t| now.saturating_add(t)),
                        };
                        if deadline.is_none_or(|d| now < d) {
                            return Err(self.suspend(kind, deadline));
                        }
                        Recorded::TimedOut
                    }
                    Err(crate::Error::RunNotFound(_)) => {
                        Recorded::ChildEnded { output: None, error: Some(format!("run {id} does not exist")) }
                    }
                    Err(e) => return Err(stop(Stop::Store(e.to_string()))),
                };
                self.record(call.clone(), outcome.clone()).await?;
                outcome
            }
        };
        match outcome {
            Recorded::ChildEnded { output: Some(output), .. } => Ok(Some(Ok(output))),
            Recorded::ChildEnded { error, .. } => Ok(Some(Err(error.unwrap_or_default()))),
            Recorded::TimedOut => Ok(None),
            other => Err(self.corrupt(&call, &other)),
        }
    }
}

/// A call to make, and the service and instance it goes to, if any.
type ServiceCall = (HttpRequest, Option<(String, std::net::SocketAddr)>);

impl RunCx {
    /// A call to `http://NAME.service.hearth/...` made to go to one of the
    /// service's passing instances, with `Host` as the URL's, and the
    /// instance picked (the call is outstanding on it until
    /// `Balancers::done`); any other call as it is. `Err`: why the call is
    /// not made, for the workflow.
    async fn to_service(&self, mut request: HttpRequest) -> wasmtime::Result<Result<ServiceCall, String>> {
        let Ok(uri) = request.url.parse::<ureq::http::Uri>() else { return Ok(Ok((request, None))) };
        let host = uri.host().unwrap_or_default().to_ascii_lowercase();
        let Some(name) = outbound::named(&host) else { return Ok(Ok((request, None))) };
        let declared = match self.workflows.definition(&self.run.workflow).await {
            Ok(definition) => definition
                .version(self.run.version)
                .and_then(|v| v.manifest.as_deref())
                .and_then(|m| outbound::from_manifest(m).ok())
                .unwrap_or_default(),
            Err(crate::Error::NotFound(_)) => Vec::new(),
            Err(e) => return Err(stop(Stop::Store(e.to_string()))),
        };
        let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
        if let Err(message) = outbound::check(&declared, name, &scheme, uri.port_u16()) {
            return Ok(Err(message));
        }
        let key = format!("{}{name}", outbound::ENDPOINTS);
        let record = self.workflows.store().get(&key).await.map_err(|e| stop(Stop::Store(e.to_string())))?;
        let value = record.as_ref().map(|kv| kv.value.as_slice());
        let picked = match self.workflows.services().pick(name, value) {
            Ok(picked) => picked,
            Err(message) => return Ok(Err(message)),
        };
        let address = picked.address;
        if let Some(machine) = &picked.machine {
            // Counted as the machine's activity, and woken first if it sleeps.
            if let Err(error) = self.workflows.activity().pass(machine, picked.asleep).await {
                self.workflows.services().done(name, address, hearth_routing::Outcome::Failed);
                return Ok(Err(format!(
                    "http://{name}.{} failed: the instance's machine did not wake: {error}",
                    outbound::DOMAIN
                )));
            }
        }
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        if !request.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            request.headers.push(("host".into(), format!("{name}.{}", outbound::DOMAIN)));
        }
        request.url = format!("http://{address}{path}");
        Ok(Ok((request, Some((name.to_owned(), address)))))
    }

    /// The text a replayed `config-get` recorded sealed.
    fn open(&self, call: &Call, sealed: &str) -> wasmtime::Result<String> {
        let seq = self.cursor.seq().saturating_sub(1);
        match self.workflows.config().open_sealed(sealed) {
            Ok(serde_json::Value::String(text)) => Ok(text),
            Ok(_) => Err(self.corrupt(call, &Recorded::Secret { sealed: sealed.to_owned() })),
            Err(e) => Err(stop(Stop::Sealed { seq, reason: e.to_string() })),
        }
    }

    async fn number(&mut self, call: Call, live: fn() -> u64) -> wasmtime::Result<u64> {
        match self.replay(&call)? {
            Some(Recorded::Number { value }) => Ok(value),
            Some(other) => Err(self.corrupt(&call, &other)),
            None => {
                let value = live();
                self.record(call, Recorded::Number { value }).await?;
                Ok(value)
            }
        }
    }
}

/// What `config-get(key)` reads in `resolved`: a leaf's text or a table's
/// JSON (`""`: the whole tree), and whether a secret is in it.
fn lookup(resolved: &Resolved, key: &str) -> (Option<String>, bool) {
    let within = if key.is_empty() {
        None
    } else {
        match Key::parse(key) {
            Ok(parsed) => Some(parsed),
            Err(_) => return (None, false),
        }
    };
    let Some(value) = resolved.at(key) else { return (None, false) };
    let secret =
        resolved.leaves.iter().any(|(k, leaf)| leaf.secret && within.as_ref().is_none_or(|w| k.is_within(w)));
    (Some(hearth_config::tree::as_text(&value)), secret)
}

/// Runs one activity: the request, with its idempotency key.
fn activity(agent: &ureq::Agent, request: HttpRequest, key: &str) -> Recorded {
    let url = request.url.as_str();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Recorded::Error { message: format!("{url:?} is not an http:// or https:// URL") };
    }
    let method = match ureq::http::Method::from_bytes(request.method.to_ascii_uppercase().as_bytes()) {
        Ok(m) => m,
        Err(_) => return Recorded::Error { message: format!("{:?} is not an HTTP method", request.method) },
    };
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    let mut has_key = false;
    for (name, value) in &request.headers {
        has_key |= name.eq_ignore_ascii_case("idempotency-key");
        builder = builder.header(name.as_str(), value.as_str());
    }
    if !has_key {
        builder = builder.header("idempotency-key", key);
    }
    let http_request = match builder.body(request.body) {
        Ok(r) => r,
        Err(e) => return Recorded::Error { message: format!("the request is not valid: {e}") },
    };
    let mut response = match agent.run(http_request) {
        Ok(r) => r,
        Err(e) => return Recorded::Error { message: format!("{} {url}: {e}", request.method) },
    };
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = match response.body_mut().with_config().limit(MAX_RESPONSE_BODY as u64).read_to_vec() {
        Ok(b) => b,
        Err(e) => {
            return Recorded::Error {
                message: format!("reading the answer of {url}: {e} (answers are kept up to 1 MiB)"),
            };
        }
    };
    Recorded::Response {
        status,
        headers,
        body_base64: base64::engine::general_purpose::STANDARD.encode(body),
    }
}

pub(crate) fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .user_agent(concat!("hearth-workflow/", env!("CARGO_PKG_VERSION")))
        .timeout_global(Some(HTTP_TIMEOUT))
        .max_redirects(0)
        .build()
        .new_agent()
}

/// A clock that always says the same: WASI clocks in a workflow must not
/// leak time into it outside the journal.
struct FrozenClock(u64);

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_millis(self.0)
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        self.0
    }
}

/// SplitMix64, seeded by the run id: WASI randomness that replays the same.
struct SplitMix(u64);

impl rand_core_wasi::TryRng for SplitMix {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((self.try_next_u64()? >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Ok(z ^ (z >> 31))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

impl rand_core_wasi::TryCryptoRng for SplitMix {}

fn seed(id: &str) -> u64 {
    // FNV-1a: stable across builds, unlike `DefaultHasher`.
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The guest's stdout and stderr for one execution, kept up to
/// [`MAX_OUTPUT`] bytes; more is dropped, never an error for the guest.
#[derive(Clone, Default)]
pub(crate) struct OutputPipe(Arc<Mutex<Vec<u8>>>);

impl OutputPipe {
    pub(crate) fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = MAX_OUTPUT.saturating_sub(buf.len());
        buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

impl IsTerminal for OutputPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for OutputPipe {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for OutputPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for OutputPipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core_wasi::Rng;

    #[test]
    fn seeded_randomness_replays_the_same() {
        let (mut a, mut b) = (SplitMix(seed("run-1")), SplitMix(seed("run-1")));
        let mut c = SplitMix(seed("run-2"));
        let (x, y, z) = (a.next_u64(), b.next_u64(), c.next_u64());
        assert_eq!(x, y);
        assert_ne!(x, z);
        let mut buf = [0u8; 13];
        a.fill_bytes(&mut buf);
        assert_ne!(buf, [0u8; 13]);
    }
}
