//! Which instance of a service a proxied request goes to, and which
//! instances are left out for a while: a pure state machine, fed the time,
//! so that the policy is tested without sockets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Failures in a row that eject an instance.
pub(crate) const FAILURES_TO_EJECT: u32 = 3;
/// How long a first ejection lasts.
pub(crate) const FIRST_EJECTION: Duration = Duration::from_secs(5);
/// The longest an ejection lasts.
pub(crate) const MAX_EJECTION: Duration = Duration::from_secs(60);

/// One passing instance, as published in the service's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Endpoint {
    pub(crate) id: String,
    pub(crate) addr: SocketAddr,
}

/// What an attempt on an instance came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It answered, with anything but a 5xx.
    Answered,
    /// It refused or dropped the connection, timed out connecting, or
    /// answered with a 5xx.
    Failed,
}

#[derive(Debug)]
struct Instance {
    endpoint: Endpoint,
    outstanding: u32,
    /// Failures since the last success.
    failures: u32,
    ejected_until: Option<Instant>,
    /// How long the next ejection lasts.
    next_ejection: Duration,
}

impl Instance {
    fn new(endpoint: Endpoint) -> Instance {
        Instance { endpoint, outstanding: 0, failures: 0, ejected_until: None, next_ejection: FIRST_EJECTION }
    }

    fn admitted(&self, now: Instant) -> bool {
        self.ejected_until.is_none_or(|until| now >= until)
    }
}

/// The balancer of one service's instances, in one ingress.
///
/// Policy, as Envoy's least-request balancing and outlier detection:
/// - A request goes to the admitted instance with the fewest requests
///   outstanding; ties go round robin.
/// - An instance that fails three times in a row (a refused, reset or timed
///   out connection, or a 5xx) is ejected for 5 s.
/// - An ejected instance is admitted again on trial when its time is up; a
///   failure on trial ejects it again at once, for twice as long, up to 60 s.
/// - Any success resets its failures and its ejection time.
/// - The last admitted instance is never ejected: it answers rather than
///   nobody.
/// - An ejected instance still takes a request when every admitted one has
///   been tried for it, rather than failing the request.
/// - Instances published again keep their state; instances no longer
///   published are forgotten.
#[derive(Debug, Default)]
pub(crate) struct Balancer {
    instances: Vec<Instance>,
    /// Where the next tie-break starts.
    cursor: usize,
}

impl Balancer {
    /// Takes the instances now published, keeping what is known of those
    /// that stay.
    pub(crate) fn set(&mut self, endpoints: Vec<Endpoint>) {
        let mut old = std::mem::take(&mut self.instances);
        self.instances = endpoints
            .into_iter()
            .map(|endpoint| match old.iter().position(|i| i.endpoint == endpoint) {
                Some(at) => old.swap_remove(at),
                None => Instance::new(endpoint),
            })
            .collect();
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// The instance for the next attempt of a request that has already
    /// tried `tried`, counted as outstanding until [`Balancer::finish`];
    /// `None` when every instance has been tried.
    pub(crate) fn pick(&mut self, now: Instant, tried: &[Endpoint]) -> Option<Endpoint> {
        let untried = |i: &&Instance| !tried.contains(&i.endpoint);
        let admitted = self.least(|i| untried(&i) && i.admitted(now));
        let at = admitted.or_else(|| self.least(|i| untried(&i)))?;
        self.cursor = (at + 1) % self.instances.len();
        let instance = &mut self.instances[at];
        instance.outstanding += 1;
        Some(instance.endpoint.clone())
    }

    /// The eligible instance with the fewest outstanding requests, the first
    /// from the cursor on among equals.
    fn least(&self, eligible: impl Fn(&Instance) -> bool) -> Option<usize> {
        let n = self.instances.len();
        (0..n)
            .map(|k| (self.cursor + k) % n)
            .filter(|&at| eligible(&self.instances[at]))
            .min_by_key(|&at| self.instances[at].outstanding)
    }

    /// A request picked for `endpoint` is no longer outstanding.
    pub(crate) fn finish(&mut self, endpoint: &Endpoint) {
        if let Some(i) = self.find(endpoint) {
            i.outstanding = i.outstanding.saturating_sub(1);
        }
    }

    /// Records what an attempt on `endpoint` came to.
    pub(crate) fn record(&mut self, endpoint: &Endpoint, outcome: Outcome, now: Instant) {
        let others_admitted = self.instances.iter().any(|i| &i.endpoint != endpoint && i.admitted(now));
        let Some(i) = self.find(endpoint) else { return };
        match outcome {
            Outcome::Answered => {
                i.failures = 0;
                i.ejected_until = None;
                i.next_ejection = FIRST_EJECTION;
            }
            Outcome::Failed => {
                i.failures = i.failures.saturating_add(1);
                if i.failures >= FAILURES_TO_EJECT && i.admitted(now) && others_admitted {
                    i.ejected_until = Some(now + i.next_ejection);
                    i.next_ejection = (i.next_ejection * 2).min(MAX_EJECTION);
                }
            }
        }
    }

    /// Whether `endpoint` is ejected at `now`.
    #[cfg(test)]
    pub(crate) fn is_ejected(&self, endpoint: &Endpoint, now: Instant) -> bool {
        self.instances.iter().any(|i| &i.endpoint == endpoint && !i.admitted(now))
    }

    fn find(&mut self, endpoint: &Endpoint) -> Option<&mut Instance> {
        self.instances.iter_mut().find(|i| &i.endpoint == endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(id: &str) -> Endpoint {
        let port = 9000 + id.as_bytes()[0] as u16;
        Endpoint { id: id.into(), addr: SocketAddr::from(([127, 0, 0, 1], port)) }
    }

    fn balancer(ids: &[&str]) -> Balancer {
        let mut b = Balancer::default();
        b.set(ids.iter().map(|id| endpoint(id)).collect());
        b
    }

    /// Picks and finishes at once, `n` times: the ids picked.
    fn picks(b: &mut Balancer, now: Instant, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let e = b.pick(now, &[]).expect("an instance");
                b.finish(&e);
                e.id
            })
            .collect()
    }

    fn fail(b: &mut Balancer, id: &str, times: u32, now: Instant) {
        for _ in 0..times {
            b.record(&endpoint(id), Outcome::Failed, now);
        }
    }

    #[test]
    fn a_request_goes_to_the_admitted_instance_with_the_fewest_requests_outstanding() {
        let now = Instant::now();
        let mut b = balancer(&["a", "b", "c"]);
        let first = b.pick(now, &[]).expect("a");
        let second = b.pick(now, &[]).expect("b");
        // Two are busy: the third goes to the idle one, and so does the next
        // once the first two are still busy and it is not.
        let third = b.pick(now, &[]).expect("c");
        b.finish(&third);
        assert_eq!(b.pick(now, &[]), Some(third.clone()));
        b.finish(&third);
        b.finish(&first);
        b.finish(&second);
        // A slow instance (one outstanding) is passed over while others are idle.
        let slow = b.pick(now, &[]).expect("slow");
        let picked = picks(&mut b, now, 6);
        assert!(!picked.contains(&slow.id), "{picked:?}");
    }

    #[test]
    fn ties_go_round_robin() {
        let mut b = balancer(&["a", "b", "c"]);
        assert_eq!(picks(&mut b, Instant::now(), 6), ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn an_instance_that_fails_three_times_in_a_row_is_ejected_for_5_s() {
        let now = Instant::now();
        let mut b = balancer(&["a", "b"]);
        fail(&mut b, "a", 2, now);
        assert!(!b.is_ejected(&endpoint("a"), now));
        fail(&mut b, "a", 1, now);
        assert!(b.is_ejected(&endpoint("a"), now));
        assert_eq!(picks(&mut b, now, 4), ["b", "b", "b", "b"]);
        let later = now + FIRST_EJECTION;
        assert!(!b.is_ejected(&endpoint("a"), later));
        assert!(picks(&mut b, later, 2).contains(&"a".to_string()));
        // Failures that are not in a row do not eject.
        let mut b = balancer(&["a", "b"]);
        fail(&mut b, "a", 2, now);
        b.record(&endpoint("a"), Outcome::Answered, now);
        fail(&mut b, "a", 2, now);
        assert!(!b.is_ejected(&endpoint("a"), now));
    }

    #[test]
    fn a_failure_on_trial_ejects_again_at_once_for_twice_as_long_up_to_60_s() {
        let mut now = Instant::now();
        let mut b = balancer(&["a", "b"]);
        fail(&mut b, "a", 3, now);
        let mut expected = FIRST_EJECTION;
        for _ in 0..6 {
            assert!(b.is_ejected(&endpoint("a"), now + expected - Duration::from_millis(1)));
            now += expected;
            assert!(!b.is_ejected(&endpoint("a"), now), "admitted on trial after {expected:?}");
            fail(&mut b, "a", 1, now);
            expected = (expected * 2).min(MAX_EJECTION);
        }
        assert_eq!(expected, MAX_EJECTION);
        assert!(b.is_ejected(&endpoint("a"), now + MAX_EJECTION - Duration::from_millis(1)));
        assert!(!b.is_ejected(&endpoint("a"), now + MAX_EJECTION));
    }

    #[test]
    fn any_success_resets_its_failures_and_its_ejection_time() {
        let mut now = Instant::now();
        let mut b = balancer(&["a", "b"]);
        fail(&mut b, "a", 3, now);
        now += FIRST_EJECTION;
        fail(&mut b, "a", 1, now);
        assert!(b.is_ejected(&endpoint("a"), now + FIRST_EJECTION));
        now += FIRST_EJECTION * 2;
        b.record(&endpoint("a"), Outcome::Answered, now);
        // It takes three failures again, and the first ejection is 5 s again.
        fail(&mut b, "a", 2, now);
        assert!(!b.is_ejected(&endpoint("a"), now));
        fail(&mut b, "a", 1, now);
        assert!(b.is_ejected(&endpoint("a"), now));
        assert!(!b.is_ejected(&endpoint("a"), now + FIRST_EJECTION));
    }

    #[test]
    fn the_last_admitted_instance_is_never_ejected() {
        let now = Instant::now();
        let mut b = balancer(&["a", "b"]);
        fail(&mut b, "a", 3, now);
        fail(&mut b, "b", 10, now);
        assert!(!b.is_ejected(&endpoint("b"), now));
        assert_eq!(picks(&mut b, now, 3), ["b", "b", "b"]);
        // Alone, an instance is never ejected at all.
        let mut b = balancer(&["a"]);
        fail(&mut b, "a", 10, now);
        assert_eq!(picks(&mut b, now, 1), ["a"]);
    }

    #[test]
    fn an_ejected_instance_still_takes_a_request_when_every_admitted_one_was_tried() {
        let now = Instant::now();
        let mut b = balancer(&["a", "b", "c"]);
        fail(&mut b, "a", 3, now);
        let tried = [endpoint("b"), endpoint("c")];
        assert_eq!(b.pick(now, &tried).map(|e| e.id), Some("a".into()));
        let all = [endpoint("a"), endpoint("b"), endpoint("c")];
        assert_eq!(b.pick(now, &all), None, "every instance was tried");
    }

    #[test]
    fn instances_published_again_keep_their_state_and_others_are_forgotten() {
        let now = Instant::now();
        let mut b = balancer(&["a", "b"]);
        fail(&mut b, "a", 3, now);
        let busy = b.pick(now, &[]).expect("b");
        b.set(vec![endpoint("a"), endpoint("b"), endpoint("c")]);
        assert!(b.is_ejected(&endpoint("a"), now));
        // b is still busy, so c (new, idle) is picked.
        assert_eq!(b.pick(now, &[]).map(|e| e.id), Some("c".into()));
        b.finish(&busy);
        b.set(vec![endpoint("c")]);
        assert!(!b.is_ejected(&endpoint("a"), now));
        // A request finishing on a forgotten instance changes nothing.
        b.finish(&busy);
        b.record(&busy, Outcome::Failed, now);
        assert_eq!(picks(&mut b, now, 2), ["c", "c"]);
        b.set(vec![]);
        assert!(b.is_empty());
        assert_eq!(b.pick(now, &[]), None);
    }
}
