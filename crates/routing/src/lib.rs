//! What the apps ingress and a service's published ports share about
//! reaching instances, as pure code, so that one policy serves both:
//!
//! - [`route`]: a route, `HOST[/PATH]`: how it is written, checked and
//!   matched (an exact host, then the longest path prefix). Apps and
//!   services declare routes in the same syntax.
//! - [`balance`]: which instance takes the next request or connection
//!   (the fewest outstanding), and which failing ones are left out for a
//!   while (ejection). The ingress balances HTTP requests with it, a
//!   published port (`service create -p`) TCP connections.
//! - [`activity`]: the connections each machine saw on this host, which
//!   decide when one that sleeps when idle may sleep, and the wake-up of
//!   one a connection finds asleep (forwards, published ports and the
//!   ingress all pass their connections through it).
//! - [`service_named`]: which service a host such as
//!   `backend.service.hearth` names, for apps' and workflows' calls.
//!
//! This crate does no I/O and knows no store: the subsystems feed it what
//! they see (the instances published, what an attempt came to, the time),
//! and the machines service wakes machines through [`activity::Waker`].

pub mod activity;
pub mod balance;
pub mod route;

pub use balance::{Balancer, Outcome};
pub use route::{InvalidRoute, Route};

/// The domain apps and workflows call services under:
/// `http://NAME.service.hearth/`.
pub const SERVICE_DOMAIN: &str = "service.hearth";

/// The service `host` names, if it is under [`SERVICE_DOMAIN`] (a final
/// dot allowed): the part before it, which may not be a valid name (`a.b`,
/// or empty).
pub fn service_named(host: &str) -> Option<&str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host == SERVICE_DOMAIN {
        return Some("");
    }
    host.strip_suffix(SERVICE_DOMAIN)?.strip_suffix('.')
}

#[cfg(test)]
mod tests {
    use super::service_named;

    #[test]
    fn a_host_under_the_service_domain_names_the_part_before_it() {
        assert_eq!(service_named("backend.service.hearth"), Some("backend"));
        assert_eq!(service_named("backend.service.hearth."), Some("backend"));
        assert_eq!(service_named("a.b.service.hearth"), Some("a.b"));
        assert_eq!(service_named("service.hearth"), Some(""));
        assert_eq!(service_named("backend.service.hearth.evil"), None);
        assert_eq!(service_named("backendservice.hearth"), None);
    }
}
