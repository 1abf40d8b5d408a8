//! The one error shape every endpoint returns.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hearth_client::types::{ErrorBody, ErrorDetail};

/// An error on its way to becoming a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: ErrorDetail,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            status,
            detail: ErrorDetail { code: code.to_owned(), message: message.into(), hint: hint.into() },
        }
    }

    pub fn bad_request(code: &str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message, hint)
    }

    pub fn not_found(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message, hint)
    }

    pub fn conflict(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message, hint)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            message,
            "send `Authorization: Bearer TOKEN`; `hearth token` on the daemon's host prints TOKEN, and the CLI takes it as --token or HEARTH_TOKEN",
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            message,
            "this is a bug in hearth or a failing disk; the daemon log has details",
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            message,
            "the daemon is shutting down; start it again with `hearth serve`",
        )
    }

    pub fn code(&self) -> &str {
        &self.detail.code
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        // `busy` is a limit on work in flight: it passes in a moment.
        let busy = self.status == StatusCode::SERVICE_UNAVAILABLE && self.detail.code == "busy";
        let mut response = (self.status, axum::Json(ErrorBody { error: self.detail })).into_response();
        if unauthorized {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if busy {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Store errors mapped onto HTTP, with the hint a person needs.
impl From<hearth_store::Error> for ApiError {
    fn from(error: hearth_store::Error) -> Self {
        use hearth_store::Error as E;
        let message = error.to_string();
        match error {
            E::Compacted { oldest, .. } => Self::new(
                StatusCode::GONE,
                "compacted",
                message,
                format!("start from revision {oldest} or later, after reading the current state"),
            ),
            E::FutureRevision { current, .. } => {
                Self::bad_request("future_revision", message, format!("use a revision up to {}", current + 1))
            }
            E::LeaseNotFound(_) => Self::not_found(message, "grant a new lease with POST /v1/leases"),
            E::InvalidTtl(_) => {
                Self::bad_request("invalid_field", message, "use a TTL between 1 s and 30 days")
            }
            E::InvalidKey { .. } => Self::bad_request(
                "invalid_field",
                message,
                "keys are non-empty UTF-8 strings of at most 4096 bytes",
            ),
            E::ValueTooLarge { .. } => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                message,
                "store large data in a file and keep its path in the store",
            ),
            E::Closed => Self::unavailable(message),
            E::Unavailable { .. } => {
                tracing::warn!(error = %display_chain(&error), "The store on etcd does not answer.");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    display_chain(&error),
                    "check that etcd is running and reachable from this host, then try again",
                )
            }
            E::Denied { .. } => {
                tracing::warn!(error = %display_chain(&error), "etcd refused hearth's credentials or permissions.");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_denied",
                    message,
                    "the daemon's access to etcd is refused, not this request: check --store-user/--store-password-file and the user's role",
                )
            }
            E::Fenced { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_leader",
                message,
                "this host lost its leadership while acting; the new leader acts instead: retry",
            ),
            E::Refused { .. } => Self::bad_request(
                "store_refused",
                message,
                "change the request as the message says; etcd's limits are stricter than the embedded store's",
            ),
            E::Open { .. } | E::Locked { .. } | E::Backend(_) | E::Corrupt(_) | E::UnfencedWrite { .. } => {
                tracing::error!(error = %display_chain(&error), "Store operation failed.");
                Self::internal(display_chain(&error))
            }
        }
    }
}

/// `error: cause: cause`, for logs and messages that must carry the chain.
pub fn display_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// Machine errors mapped onto HTTP, with the hint a person needs.
impl From<hearth_machines::Error> for ApiError {
    fn from(error: hearth_machines::Error) -> Self {
        use hearth_machines::Error as E;
        let message = hearth_machines::chain(&error);
        match error {
            E::NotFound(_) => Self::not_found(message, "list machines with `hearth machine ls`"),
            E::AlreadyExists(name) => Self::conflict(
                message,
                format!("pick another --name, or remove the old one with `hearth machine rm -f {name}`"),
            ),
            E::Invalid(_) => Self::bad_request("invalid_field", message, "see `hearth machine run --help`"),
            E::DiskTooSmall { image_mib, .. } => Self::bad_request(
                "invalid_field",
                message,
                format!("give --disk-size {image_mib}M or more, or leave it out for the image's size"),
            ),
            E::SnapshotNotFound(_) => Self::not_found(message, "list snapshots with `hearth snapshot ls`"),
            E::SnapshotExists(_) => {
                Self::conflict(message, "pick another name, or remove it with `hearth snapshot rm`")
            }
            E::ImageNotFound(_) => Self::not_found(
                message,
                "pull it with `hearth image pull REF`, build one with `hearth image build debian`, or list them with `hearth image ls`",
            ),
            E::NotRunning { ref name, .. } => {
                let hint = format!("start it with `hearth machine start {name}`");
                Self::conflict(message, hint)
            }
            E::StillRunning { ref name, .. } => {
                let hint = format!(
                    "stop it first (`hearth machine stop {name}`) or use `hearth machine rm -f {name}`"
                );
                Self::conflict(message, hint)
            }
            E::TriggerNotFound { ref machine, .. } => Self::new(
                StatusCode::NOT_FOUND,
                "trigger_not_found",
                message,
                format!("`hearth machine trigger ls {machine}` lists its triggers"),
            ),
            E::Elsewhere { ref host, .. } => Self::new(
                StatusCode::CONFLICT,
                "machine_elsewhere",
                message,
                format!(
                    "run this on host {host} (`hearth --host URL ...` with {host}'s daemon's address), where the machine's VM and disk are"
                ),
            ),
            E::SnapshotElsewhere { ref host, .. } => Self::new(
                StatusCode::CONFLICT,
                "snapshot_elsewhere",
                message,
                format!(
                    "run this on host {host} (`hearth --host URL ...` with {host}'s daemon's address), where the snapshot's files are"
                ),
            ),
            E::BackendUnavailable { .. } => Self::bad_request(
                "backend_unavailable",
                message,
                "omit --backend to use the best backend this host can run; `hearth status` shows what it found",
            ),
            E::AgentMissing => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "agent_missing",
                message,
                "build it with `make agent`, or point HEARTH_AGENT at a static hearth-agent binary",
            ),
            E::BootFailed(_) => Self::new(
                StatusCode::BAD_GATEWAY,
                "boot_failed",
                message,
                "`hearth machine logs NAME` shows the console",
            ),
            E::Contended(_) => Self::conflict(message, "try again"),
            E::Image(ref image_error) => image_error_response(image_error, message),
            E::Store(store) => Self::from(store),
            E::Network(network) => Self::from(network),
            E::Agent(_) => Self::new(
                StatusCode::BAD_GATEWAY,
                "agent_unreachable",
                message,
                "the machine's agent did not answer; `hearth machine logs NAME` shows the console",
            ),
            E::Vmm(_) | E::Guest(_) | E::Kernel(_) | E::Corrupt(..) | E::Io { .. } | E::Internal(_) => {
                tracing::error!(error = %message, "Machine operation failed.");
                Self::internal(message)
            }
        }
    }
}

fn image_error_response(error: &hearth_machines::image::Error, message: String) -> ApiError {
    let code = error.code();
    let (status, hint) = match code {
        "invalid_field" => {
            (StatusCode::BAD_REQUEST, "check the spelling; e.g. debian:bookworm or ghcr.io/org/app:1.0")
        }
        "not_found" => (
            StatusCode::NOT_FOUND,
            "`hearth image ls` lists local images; check the tag exists in the registry",
        ),
        "ambiguous" => (StatusCode::BAD_REQUEST, "give more digits of the digest, or the image's name"),
        "registry_unavailable" => {
            (StatusCode::BAD_GATEWAY, "check the registry address and your network, then try again")
        }
        "registry_unauthorized" => (
            StatusCode::UNAUTHORIZED,
            "pass --username and --password-stdin for a private image, or check the repository name",
        ),
        "image_too_large" => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "pick a smaller image or tag; the limits are in the image store's options",
        ),
        "digest_mismatch" | "bad_image" => (
            StatusCode::BAD_GATEWAY,
            "the registry served damaged or unusable data; try again or pick another tag",
        ),
        "command_failed" => {
            (StatusCode::INTERNAL_SERVER_ERROR, "the daemon log has the command's full output")
        }
        _ => {
            tracing::error!(error = %message, "Image operation failed.");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "this is a bug in hearth or a failing disk; the daemon log has details",
            )
        }
    };
    ApiError::new(status, code, message, hint)
}

/// Network errors mapped onto HTTP, with the hint a person needs.
impl From<hearth_net::service::Error> for ApiError {
    fn from(error: hearth_net::service::Error) -> Self {
        use hearth_net::service::Error as E;
        let message = error.to_string();
        match error {
            E::NotFound(_) => Self::not_found(message, "list networks with `hearth network ls`"),
            E::AlreadyExists(_) => Self::conflict(message, "pick another name, or use the existing one"),
            E::Invalid(_) => Self::bad_request(
                "invalid_field",
                message,
                "see `hearth network --help` and `hearth fault --help`",
            ),
            E::Overlap { .. } => {
                Self::conflict(message, "pick a subnet that overlaps no other network, or omit --subnet")
            }
            E::OutOfSubnet { .. } => {
                Self::bad_request("invalid_field", message, "`hearth network inspect NAME` shows its subnet")
            }
            E::Taken { .. } => {
                Self::conflict(message, "pick another --ip, or omit it to get the next free address")
            }
            E::Full(_) => {
                Self::conflict(message, "remove machines from it, or create a larger network with --subnet")
            }
            E::InUse { .. } => {
                Self::conflict(message, "remove those machines first (`hearth machine rm -f NAME`)")
            }
            E::NoSuchMachine(_) => Self::not_found(
                message,
                "faults name machines with network interfaces; `hearth machine ls` lists them",
            ),
            E::FaultNotFound(_) => Self::not_found(message, "`hearth fault ls` lists active faults"),
            E::Store(e) => Self::from(e),
            E::Link(ref link) if link.code() == "unsupported" => {
                let hint = link.hint().unwrap_or("this host's kernel cannot do that").to_owned();
                Self::new(StatusCode::NOT_IMPLEMENTED, "unsupported", message, hint)
            }
            E::Corrupt(..) | E::Link(_) => {
                tracing::error!(error = %message, "Network operation failed.");
                Self::internal(message)
            }
        }
    }
}

/// Host registry errors mapped onto HTTP, with the hint a person needs.
impl From<hearth_hosts::Error> for ApiError {
    fn from(error: hearth_hosts::Error) -> Self {
        use hearth_hosts::Error as E;
        let message = error.to_string();
        match error {
            E::Store(e) => Self::from(e),
            E::NotFound(_) => Self::not_found(message, "`hearth host ls` lists the hosts"),
            E::Alive(_) => Self::conflict(
                message,
                "stop its daemon first, and wait until `hearth host ls` shows it lost",
            ),
            E::NameTaken { .. } | E::Corrupt { .. } | E::LeaseFile { .. } | E::Slow(_) => {
                tracing::error!(error = %message, "A host record cannot be used.");
                Self::internal(message)
            }
        }
    }
}

/// Registry errors mapped onto HTTP, with the hint a person needs.
impl From<hearth_services::Error> for ApiError {
    fn from(error: hearth_services::Error) -> Self {
        use hearth_services::Error as E;
        let message = error.to_string();
        match error {
            E::NotFound(_) => Self::not_found(message, "`hearth service ls` lists the services"),
            E::InstanceNotFound { service, .. } => Self::not_found(
                message,
                format!(
                    "`hearth service inspect {service}` lists its instances; register again if yours expired"
                ),
            ),
            E::AlreadyExists(name) => Self::conflict(
                message,
                format!("pick another name, or remove it first with `hearth service rm {name}`"),
            ),
            E::Invalid(_) => Self::bad_request("invalid_field", message, "see `hearth service --help`"),
            E::NotRegistered(_) => Self::conflict(
                message,
                "register instances under another name; `hearth service scale` changes a service of machines",
            ),
            E::NotMachines(_) => Self::conflict(message, "its instances come and go by registration"),
            E::PortTaken { .. } => Self::conflict(message, "pick another host port (-p HOST:PORT)"),
            E::Conflict(_) => Self::conflict(message, "try again"),
            E::Store(e) => Self::from(e),
            E::Machines(e) => Self::from(e),
            E::Corrupt(..) => {
                tracing::error!(error = %message, "A service record is unreadable.");
                Self::internal(message)
            }
        }
    }
}

/// Config errors mapped onto HTTP, with the hint a person needs.
impl From<hearth_config::Error> for ApiError {
    fn from(error: hearth_config::Error) -> Self {
        use hearth_config::Error as E;
        let error = match error {
            E::Store(store) => return store.into(),
            other => other,
        };
        let status = match &error {
            E::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            E::InvalidKey { .. }
            | E::InvalidScope { .. }
            | E::InvalidLayer { .. }
            | E::InvalidValue { .. }
            | E::InvalidSchema { .. }
            | E::FutureRevision { .. } => StatusCode::BAD_REQUEST,
            E::SchemaViolation { .. } | E::Undecryptable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            E::NotFound { .. } => StatusCode::NOT_FOUND,
            E::HistoryGone { .. } => StatusCode::GONE,
            E::Contended { .. } => StatusCode::SERVICE_UNAVAILABLE,
            E::KeyFile { .. } | E::BadKeyFile { .. } | E::Corrupt { .. } => {
                tracing::error!(error = %display_chain(&error), "Config operation failed.");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, error.code(), display_chain(&error), error.hint())
    }
}

/// Alerting errors mapped onto HTTP.
impl From<hearth_monitor::Error> for ApiError {
    fn from(error: hearth_monitor::Error) -> Self {
        use hearth_monitor::Error as E;
        match error {
            E::Store(store) => store.into(),
            E::Rules(rules) => ApiError::bad_request(
                "invalid_rules",
                format!("the alert rules were not applied:\n{rules}"),
                "fix each field named above and apply the file again; nothing was changed",
            ),
            E::Silence(problem) => ApiError::bad_request(
                "invalid_silence",
                format!("the silence was not made: {problem}"),
                "give matchers like rule=NAME, app!=web or machine=~\"db-.*\"",
            ),
            E::NotFound { what, name } => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} {name:?} does not exist"),
                format!(
                    "list them with `hearth alert {}`",
                    if what == "silence" { "silence ls" } else { "rules" }
                ),
            ),
            E::Builtin(message) => ApiError::new(
                StatusCode::CONFLICT,
                "builtin_rule",
                message,
                "replace it with `hearth alert rule add`",
            ),
            E::Corrupt { .. } => {
                tracing::error!(error = %error, "Alerting operation failed.");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "corrupt",
                    error.to_string(),
                    "apply a good rules file with `hearth alert apply`",
                )
            }
        }
    }
}

/// App errors mapped onto HTTP, with the hint a person needs.
impl From<hearth_apps::Error> for ApiError {
    fn from(error: hearth_apps::Error) -> Self {
        use hearth_apps::ErrorKind as K;
        let code = error.code();
        let message = display_chain(&error);
        let (status, hint) = match error.kind() {
            _ if matches!(code, "build_failed" | "build_stopped") => (
                StatusCode::BAD_REQUEST,
                "fix the handler and deploy it again; `hearth fn new NAME --lang js|py` writes one that builds",
            ),
            _ if code == "toolchain_missing" => (
                StatusCode::SERVICE_UNAVAILABLE,
                "install the build tools on the daemon's host: `make setup`",
            ),
            K::NotFound => (
                StatusCode::NOT_FOUND,
                "`hearth app ls` lists apps; `hearth app versions NAME` lists versions",
            ),
            K::Invalid => (
                StatusCode::BAD_REQUEST,
                "build a WASI HTTP component (cargo build --target wasm32-wasip2) and declare what it uses in hearth.toml",
            ),
            K::Conflict => (StatusCode::CONFLICT, "see `hearth app inspect NAME`"),
            K::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "build in release mode and strip debug info"),
            K::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "try again"),
            K::Internal => {
                tracing::error!(error = %message, "App operation failed.");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "this is a bug in hearth or a failing disk; the daemon log has details",
                )
            }
        };
        ApiError::new(status, code, message, hint)
    }
}

/// Workflow errors mapped onto HTTP, with the hint a person needs.
impl From<hearth_workflows::Error> for ApiError {
    fn from(error: hearth_workflows::Error) -> Self {
        use hearth_workflows::ErrorKind as K;
        let code = error.code();
        let message = display_chain(&error);
        let (status, hint) = match error.kind() {
            K::NotFound => (
                StatusCode::NOT_FOUND,
                "`hearth workflow ls --defs` lists workflows; `hearth workflow ls` lists runs",
            ),
            K::Invalid => (
                StatusCode::BAD_REQUEST,
                "build the workflow for wasm32-wasip2 against wit/hearth-workflow, and check its hearth.toml",
            ),
            K::Conflict => (StatusCode::CONFLICT, "see `hearth workflow show ID`"),
            K::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "build in release mode and strip debug info"),
            K::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "try again"),
            K::Internal => {
                tracing::error!(error = %message, "Workflow operation failed.");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "this is a bug in hearth or a failing disk; the daemon log has details",
                )
            }
        };
        ApiError::new(status, code, message, hint)
    }
}
