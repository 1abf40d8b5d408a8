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
//!
//! This crate does no I/O and knows no store: the subsystems feed it what
//! they see (the instances published, what an attempt came to, the time).

pub mod balance;
pub mod route;

pub use balance::{Balancer, Outcome};
pub use route::{InvalidRoute, Route};
