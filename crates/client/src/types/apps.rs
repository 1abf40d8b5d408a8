//! WebAssembly HTTP apps: deploys, versions, secrets and logs.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

wire_enum! {
    /// Where a line of an app's log came from.
    LogStream {
        /// The app's standard output.
        Stdout = "stdout",
        /// The app's standard error.
        Stderr = "stderr",
        /// A request the app answered.
        Request = "request",
        /// hearth, about the app: deploys, traps, limits, denied calls.
        Hearth = "hearth",
    }
}

wire_enum! {
    /// Which compiler's code serves an app's version.
    CodeTier {
        /// Winch's code (the baseline compiler) serves; Cranelift is not
        /// compiling it (it failed: see the note).
        Baseline = "baseline",
        /// Winch's code serves while Cranelift compiles in the background.
        Optimizing = "optimizing",
        /// Cranelift's code (the optimizing compiler) serves.
        Optimized = "optimized",
    }
}

/// Which compiler's code serves the version, and how its compile went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppTier {
    pub tier: CodeTier,
    /// `winch` or `cranelift`: the compiler of the code that serves.
    pub compiler: String,
    /// Why Winch was not used for new bytes, or why Cranelift's code does
    /// not serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// How Cranelift's compile of this version used the cache of compiled
    /// functions; absent before it compiled, and when the whole compiled
    /// component came from the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_cache: Option<FunctionCache>,
}

/// Functions of one compile taken from the cache of compiled functions
/// (hits) and compiled (misses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FunctionCache {
    pub hits: u64,
    pub misses: u64,
}

/// The largest app component a deploy takes, in bytes (before base64).
pub const MAX_APP_COMPONENT: usize = 64 << 20;

/// The largest manifest (`hearth.toml`) a client sends with a deploy.
pub const MAX_MANIFEST: usize = 256 << 10;

/// `PUT /v1/apps/{name}`: a deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployApp {
    /// The component (`wasm32-wasip2`, exporting `wasi:http/incoming-handler`), base64.
    pub component_base64: String,
    /// The `hearth.toml` beside it, if any: key-value stores, config, secrets, outbound hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// `HOST[/PATH]` routes besides `NAME.localhost`; empty keeps the current ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppVersion {
    pub number: u32,
    pub sha256: String,
    pub size: u64,
    /// Unix milliseconds.
    pub created_at: u64,
    /// The manifest text it was deployed with.
    pub manifest: Option<String>,
    /// The handler's language (`js` or `py`) when it was deployed as
    /// source; `GET /v1/apps/{name}/source` returns the code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// The largest handler source `PUT /v1/apps/{name}/source` takes, in bytes.
pub const MAX_HANDLER_SOURCE: usize = 64 << 10;

/// `PUT /v1/apps/{name}/source`: a handler deployed as source, built by
/// the daemon into the app's next version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploySource {
    /// `js` (a module exporting `fetch(request)`) or `py` (a module
    /// defining `handle(request)`).
    pub lang: String,
    /// The handler's code, at most 64 KiB.
    pub source: String,
    /// The `hearth.toml` for it, if any: outbound hosts, config, secrets,
    /// limits, triggers (the `default` key-value store is always there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// `HOST[/PATH]` routes besides `NAME.localhost`; empty keeps the current ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
}

/// `GET /v1/apps/{name}/source`: the code a version was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppSource {
    pub app: String,
    pub version: u32,
    /// `js` or `py`.
    pub lang: String,
    pub source: String,
}

/// `GET /v1/apps/{name}/source?version=N`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SourceQuery {
    /// The version; the one serving by default.
    #[serde(default)]
    pub version: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeployResult {
    pub app: String,
    pub version: AppVersion,
    /// False when the compiled code came from the cache.
    pub compiled: bool,
    /// From the request to the new version serving.
    pub duration_ms: f64,
    /// Of which building from source took (`PUT /v1/apps/{name}/source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_ms: Option<f64>,
    pub urls: Vec<String>,
    /// Which compiler's code the new version serves with: `optimizing`
    /// when Winch's code serves while Cranelift compiles in the background.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<CodeTier>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppSummary {
    pub name: String,
    /// The version that serves.
    pub active: u32,
    /// How many versions are kept.
    pub version_count: usize,
    pub routes: Vec<String>,
    pub urls: Vec<String>,
    /// The version this daemon serves, if loaded.
    pub serving: Option<u32>,
    /// Why it is not serving, if it is not.
    pub error: Option<String>,
    /// Unix milliseconds.
    pub updated_at: u64,
    /// Which compiler's code serves, if it is serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<AppTier>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppList {
    pub apps: Vec<AppSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppDetail {
    #[serde(flatten)]
    pub summary: AppSummary,
    pub versions: Vec<AppVersion>,
}

/// `POST /v1/apps/{name}/rollback`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// The version to serve; default: the one before the active one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u32>,
}

/// `PUT /v1/apps/{name}/secrets/{secret}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSecret {
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppLogLine {
    /// Unix milliseconds.
    pub time: u64,
    pub version: u32,
    pub stream: LogStream,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppLogs {
    pub lines: Vec<AppLogLine>,
}
