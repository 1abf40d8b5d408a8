//! What one request's instance sees: WASI 0.2 with stdout and stderr going
//! to the app's log, `wasi:http` whose outgoing requests pass an allow-list
//! and a check of the address they go to,
//! `wasi:keyvalue` over hearth's store, and `wasi:config` from the manifest
//! and the app's secrets. Also the per-request CPU and memory limits.

use std::collections::BTreeMap;
use std::sync::Arc;

use hearth_store::{Compare, Op, Store as StateStore, Txn};
use http_body_util::BodyExt;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::logs::{AppLog, LogPipe, LogStream};
use crate::manifest::{Limits, OutboundRule, default_port};
use crate::outbound::{self, Resolve};
use crate::record;
use hearth_wasm::TICK;

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "hearth:apps/resources",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
        },
        trappable_error_type: {
            "wasi:keyvalue/store.error" => super::KvError,
        },
        require_store_data_send: true,
    });
}

use bindings::wasi::config::store as config;
use bindings::wasi::keyvalue::{atomics, batch, store as kv};

/// Keys a `list-keys` call returns at most; the cursor pages through more.
const LIST_PAGE: usize = 1000;

/// What every request of one loaded version shares.
pub(crate) struct AppCtx {
    pub(crate) name: String,
    pub(crate) version: u32,
    pub(crate) state: Arc<dyn StateStore>,
    pub(crate) kv_stores: Vec<String>,
    /// Config variables and secret values, as `wasi:config` serves them.
    pub(crate) config: BTreeMap<String, String>,
    pub(crate) outbound: Vec<OutboundRule>,
    /// Resolves the host names of outgoing requests.
    pub(crate) resolver: Arc<dyn Resolve>,
    /// The services' passing instances, for `NAME.service.hearth`.
    pub(crate) services: Arc<crate::ingress::Upstreams>,
    pub(crate) limits: Limits,
    pub(crate) log: Arc<AppLog>,
}

impl std::fmt::Debug for AppCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No config: it holds secret values.
        f.debug_struct("AppCtx")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl AppCtx {
    fn note(&self, text: String) {
        self.log.push(self.version, LogStream::Hearth, text);
    }
}

/// The data of one request's `Store`.
pub(crate) struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: Outbound,
    memory: MemoryLimiter,
    cpu: CpuBudget,
    app: Arc<AppCtx>,
}

/// How a request ended up over its limits, if it did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Overrun {
    /// The CPU budget ran out.
    pub(crate) cpu: bool,
    /// A memory grow beyond the limit was refused (the bytes asked for).
    pub(crate) memory: Option<usize>,
}

impl HostState {
    pub(crate) fn overrun(&self) -> Overrun {
        Overrun { cpu: self.cpu.exceeded, memory: self.memory.refused }
    }
}

/// A fresh store for one request of `app`, with its limits armed.
pub(crate) fn new_store(engine: &wasmtime::Engine, app: &Arc<AppCtx>) -> Store<HostState> {
    let wasi = WasiCtx::builder()
        .stdout(LogPipe::new(app.log.clone(), app.version, LogStream::Stdout))
        .stderr(LogPipe::new(app.log.clone(), app.version, LogStream::Stderr))
        .build();
    let budget = app.limits.cpu_ms.div_ceil(TICK.as_millis() as u64).max(1);
    let state = HostState {
        wasi,
        http: WasiHttpCtx::new(),
        table: ResourceTable::new(),
        hooks: Outbound { app: app.clone() },
        memory: MemoryLimiter { limit: app.limits.memory_bytes as usize, used: 0, refused: None },
        cpu: CpuBudget { used: 0, budget, exceeded: false },
        app: app.clone(),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.memory);
    // Each tick the guest runs costs one unit of its budget and yields to
    // the executor, so a spinning guest neither starves other requests nor
    // outlives its budget. Time the guest spends waiting in the host (I/O,
    // sleeps) is not counted: that is the wall-clock timeout's job.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut ctx| {
        let cpu = &mut ctx.data_mut().cpu;
        cpu.used += 1;
        if cpu.used >= cpu.budget {
            cpu.exceeded = true;
            return Ok(UpdateDeadline::Interrupt);
        }
        Ok(UpdateDeadline::Yield(1))
    });
    store
}

struct CpuBudget {
    used: u64,
    budget: u64,
    exceeded: bool,
}

/// Caps the sum of an instance's linear memories. A refused grow is not a
/// trap by itself (`memory.grow` returns -1, as the spec says); the guest's
/// allocator usually aborts on it, and the refusal is remembered so the log
/// can say why.
struct MemoryLimiter {
    limit: usize,
    used: usize,
    refused: Option<usize>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.used - current.min(self.used) + desired;
        if total > self.limit {
            self.refused = Some(total);
            return Ok(false);
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// Adds everything an app may import to `linker`. What a given app may
/// actually use is decided per app, by its manifest: at deploy (imports it
/// does not declare are refused) and at each call.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    kv::add_to_linker::<HostState, Kv>(linker, HostState::kv)?;
    atomics::add_to_linker::<HostState, Kv>(linker, HostState::kv)?;
    batch::add_to_linker::<HostState, Kv>(linker, HostState::kv)?;
    config::add_to_linker::<HostState, Config>(linker, HostState::config)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Outgoing HTTP: deny by default, allow what the manifest lists, and check
// the address a name resolves to (see `outbound`).

struct Outbound {
    app: Arc<AppCtx>,
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<wasmtime_wasi_http::WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        drop(fut);
        Box::new(send_request(self.app.clone(), request, options))
    }
}

/// Sends one outgoing request of `app`: the allow-list by name, then one
/// lookup whose every address is checked, then a connection to those
/// addresses. A host under `service.hearth` is not looked up: it goes to
/// one of the service's passing instances, if the manifest declares it.
async fn send_request(
    app: Arc<AppCtx>,
    request: http::Request<wasmtime_wasi_http::WasiBody>,
    options: Option<wasmtime_wasi_http::RequestOptions>,
) -> SendResult {
    let uri = request.uri();
    let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
    let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or_else(|| default_port(&scheme));
    if let Some(name) = outbound::service::named(&host) {
        let name = name.to_owned();
        let sent = match outbound::service::admit(&app.outbound, &name, &scheme, port) {
            Ok(()) => {
                let timeouts = outbound::Timeouts::new(options);
                outbound::service::send(&app.services, &name, request, timeouts).await
            }
            Err(refused) => Err(refused),
        };
        let (response, io) = sent.map_err(|refused| {
            app.note(refused.note(&name));
            refused.into_error()
        })?;
        return Ok((response.map(BodyExt::boxed_unsync), Box::new(io) as Box<dyn Future<Output = _> + Send>));
    }
    if !app.outbound.iter().any(|rule| rule.allows(&scheme, &host, port)) {
        app.note(format!(
            "Denied an outgoing request to {scheme}://{host}:{port}: hearth.toml does not list it; \
             add it to `outbound` (e.g. \"{scheme}://{host}:{port}\") and deploy again."
        ));
        return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
    }
    let timeouts = outbound::Timeouts::new(options);
    let addresses =
        outbound::resolve_checked(&*app.resolver, &app.outbound, &scheme, &host, port, timeouts.connect)
            .await
            .map_err(|refused| {
                app.note(refused.note(&scheme, &host, port));
                refused.error()
            })?;
    let (response, io) = outbound::send(request, timeouts, &host, scheme == "https", &addresses).await?;
    Ok((response.map(BodyExt::boxed_unsync), Box::new(io) as Box<dyn Future<Output = _> + Send>))
}

// ---------------------------------------------------------------------------
// wasi:keyvalue over the store: `apps/data/APP/STORE/KEY`.

/// A `wasi:keyvalue` bucket: one of the app's declared stores.
// `pub` because the bindings re-export it; the module is private.
#[allow(unreachable_pub)]
#[derive(Debug)]
pub struct Bucket {
    prefix: String,
}

/// `wasi:keyvalue/store.error`, on the host side.
#[allow(unreachable_pub)]
#[derive(Debug)]
pub enum KvError {
    NoSuchStore,
    Other(String),
}

impl From<wasmtime::component::ResourceTableError> for KvError {
    fn from(e: wasmtime::component::ResourceTableError) -> Self {
        KvError::Other(e.to_string())
    }
}

impl From<hearth_store::Error> for KvError {
    fn from(e: hearth_store::Error) -> Self {
        KvError::Other(crate::chain(&e))
    }
}

pub(crate) struct KvView<'a> {
    app: &'a AppCtx,
    table: &'a mut ResourceTable,
}

struct Kv;

impl HasData for Kv {
    type Data<'a> = KvView<'a>;
}

impl HostState {
    fn kv(&mut self) -> KvView<'_> {
        KvView { app: &self.app, table: &mut self.table }
    }

    fn config(&mut self) -> ConfigView<'_> {
        ConfigView { app: &self.app }
    }
}

impl KvView<'_> {
    fn key(&self, bucket: &Resource<Bucket>, key: &str) -> Result<String, KvError> {
        let bucket = self.table.get(bucket)?;
        let full = format!("{}{key}", bucket.prefix);
        if full.len() > hearth_store::limits::MAX_KEY_LEN {
            return Err(KvError::Other(format!(
                "the key is {} bytes; keys may be at most {} bytes",
                key.len(),
                hearth_store::limits::MAX_KEY_LEN - bucket.prefix.len()
            )));
        }
        Ok(full)
    }
}

/// Writes one value, within the store's limit.
async fn put(app: &AppCtx, key: String, value: Vec<u8>) -> Result<(), KvError> {
    if value.len() > hearth_store::limits::MAX_VALUE_LEN {
        return Err(KvError::Other(format!(
            "the value is {} bytes; values may be at most {} bytes",
            value.len(),
            hearth_store::limits::MAX_VALUE_LEN
        )));
    }
    app.state.put(&key, value, None).await?;
    Ok(())
}

impl kv::Host for KvView<'_> {
    async fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, KvError> {
        if !self.app.kv_stores.contains(&identifier) {
            self.app.note(format!(
                "The app opened the key-value store {identifier:?}, which hearth.toml does not declare \
                 (it declares {:?}); add it to `key_value` and deploy again.",
                self.app.kv_stores
            ));
            return Err(KvError::NoSuchStore);
        }
        let prefix = record::data_prefix(&self.app.name, &identifier);
        Ok(self.table.push(Bucket { prefix })?)
    }

    fn convert_error(&mut self, err: KvError) -> wasmtime::Result<kv::Error> {
        Ok(match err {
            KvError::NoSuchStore => kv::Error::NoSuchStore,
            KvError::Other(text) => kv::Error::Other(text),
        })
    }
}

impl kv::HostBucket for KvView<'_> {
    async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> Result<Option<Vec<u8>>, KvError> {
        let key = self.key(&bucket, &key)?;
        Ok(self.app.state.get(&key).await?.map(|kv| kv.value))
    }

    async fn set(&mut self, bucket: Resource<Bucket>, key: String, value: Vec<u8>) -> Result<(), KvError> {
        let key = self.key(&bucket, &key)?;
        put(self.app, key, value).await
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), KvError> {
        let key = self.key(&bucket, &key)?;
        self.app.state.delete(&key).await?;
        Ok(())
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, KvError> {
        let key = self.key(&bucket, &key)?;
        Ok(self.app.state.get(&key).await?.is_some())
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Result<kv::KeyResponse, KvError> {
        let prefix = self.table.get(&bucket)?.prefix.clone();
        let range = self.app.state.range(&prefix).await?;
        let start = usize::try_from(cursor.unwrap_or(0)).unwrap_or(usize::MAX).min(range.kvs.len());
        let end = (start + LIST_PAGE).min(range.kvs.len());
        let keys = range.kvs[start..end].iter().map(|kv| kv.key[prefix.len()..].to_owned()).collect();
        let cursor = (end < range.kvs.len()).then_some(end as u64);
        Ok(kv::KeyResponse { keys, cursor })
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KvView<'_> {
    /// Read, add, and compare-and-swap on the key's revision, so that
    /// concurrent increments (from any request or daemon) are never lost.
    /// The value is the number in decimal, as wasmtime's own store keeps it.
    async fn increment(&mut self, bucket: Resource<Bucket>, key: String, delta: u64) -> Result<u64, KvError> {
        let key = self.key(&bucket, &key)?;
        for _ in 0..64 {
            let current = self.app.state.get(&key).await?;
            let (value, compare) = match &current {
                None => (0, Compare::missing(&key)),
                Some(kv) => {
                    let text = std::str::from_utf8(&kv.value).unwrap_or("");
                    let value = text.trim().parse::<u64>().map_err(|_| {
                        KvError::Other(format!(
                            "the value at {key:?} is not a decimal number, so it cannot be incremented"
                        ))
                    })?;
                    (value, Compare::mod_revision(&key, kv.mod_revision))
                }
            };
            let next = value
                .checked_add(delta)
                .ok_or_else(|| KvError::Other("incrementing would overflow a u64".into()))?;
            let txn = Txn::new().when(compare).and_then(Op::Put {
                key: key.clone(),
                value: next.to_string().into_bytes(),
                lease: None,
            });
            if self.app.state.txn(txn).await?.succeeded {
                return Ok(next);
            }
        }
        Err(KvError::Other("the key kept changing underneath; try again".into()))
    }
}

impl batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, KvError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let full = self.key(&bucket, &key)?;
            out.push(self.app.state.get(&full).await?.map(|kv| (key, kv.value)));
        }
        Ok(out)
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), KvError> {
        for (key, value) in key_values {
            let key = self.key(&bucket, &key)?;
            put(self.app, key, value).await?;
        }
        Ok(())
    }

    async fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> Result<(), KvError> {
        for key in keys {
            let key = self.key(&bucket, &key)?;
            self.app.state.delete(&key).await?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// wasi:config: the manifest's [config] and the app's secrets.

pub(crate) struct ConfigView<'a> {
    app: &'a AppCtx,
}

struct Config;

impl HasData for Config {
    type Data<'a> = ConfigView<'a>;
}

impl config::Host for ConfigView<'_> {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, config::Error>> {
        Ok(Ok(self.app.config.get(&key).cloned()))
    }

    async fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, config::Error>> {
        Ok(Ok(self.app.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
    }
}
