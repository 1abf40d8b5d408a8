//! Which instance of a service the next request or connection goes to,
//! and which instances are left out for a while: a pure state machine, fed
//! the time, so that the policy is tested without sockets. The apps ingress
//! balances HTTP requests with it, a published port TCP connections.

use std::time::{Duration, Instant};

/// Failures in a row that eject an instance.
pub const FAILURES_TO_EJECT: u32 = 3;
/// How long a first ejection lasts.
pub const FIRST_EJECTION: Duration = Duration::from_secs(5);
/// The longest an ejection lasts.
pub const MAX_EJECTION: Duration = Duration::from_secs(60);

/// What an attempt on an instance came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It answered (over HTTP, with anything but a 5xx), or took the
    /// connection.
    Answered,
    /// It refused or dropped the connection, timed out connecting, or
    /// answered with a 5xx.
    Failed,
}

#[derive(Debug)]
struct Instance<T> {
    target: T,
    outstanding: u32,
    /// Failures since the last success.
    failures: u32,
    ejected_until: Option<Instant>,
    /// How long the next ejection lasts.
    next_ejection: Duration,
    /// Its machine sleeps: a request to it waits for the wake.
    asleep: bool,
}

impl<T> Instance<T> {
    fn new(target: T) -> Instance<T> {
        Instance {
            target,
            outstanding: 0,
            failures: 0,
            ejected_until: None,
            next_ejection: FIRST_EJECTION,
            asleep: false,
        }
    }

    fn admitted(&self, now: Instant) -> bool {
        self.ejected_until.is_none_or(|until| now >= until)
    }
}

/// The balancer of one service's instances (`T`: how the user names one,
/// an address or an id with its address), in one ingress or one published
/// port.
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
/// - An instance whose machine sleeps takes a request only when no admitted
///   instance that is awake is left for it: one sleeper is woken when the
///   others cannot take it, and a sleeper is woken rather than an ejected
///   instance tried.
/// - Instances published again keep their state; instances no longer
///   published take no more requests and are forgotten once their
///   outstanding ones finish, so one published again before that still
///   counts them.
#[derive(Debug)]
pub struct Balancer<T> {
    instances: Vec<Instance<T>>,
    /// Instances no longer published with requests still outstanding.
    departed: Vec<Instance<T>>,
    /// Where the next tie-break starts.
    cursor: usize,
}

impl<T> Default for Balancer<T> {
    fn default() -> Self {
        Balancer { instances: Vec::new(), departed: Vec::new(), cursor: 0 }
    }
}

impl<T: Clone + PartialEq> Balancer<T> {
    /// Takes the instances now published, keeping what is known of those
    /// that stay.
    pub fn set(&mut self, targets: Vec<T>) {
        let mut old = std::mem::take(&mut self.instances);
        old.append(&mut self.departed);
        self.instances = targets
            .into_iter()
            .map(|target| match old.iter().position(|i| i.target == target) {
                Some(at) => old.swap_remove(at),
                None => Instance::new(target),
            })
            .collect();
        old.retain(|i| i.outstanding > 0);
        self.departed = old;
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// The instances published, in the order given.
    pub fn targets(&self) -> Vec<T> {
        self.instances.iter().map(|i| i.target.clone()).collect()
    }

    /// The instance for the next attempt of a request that has already
    /// tried `tried`, counted as outstanding until [`Balancer::finish`];
    /// `None` when every instance has been tried.
    pub fn pick(&mut self, now: Instant, tried: &[T]) -> Option<T> {
        let untried = |i: &&Instance<T>| !tried.contains(&i.target);
        let awake = self.least(|i| untried(&i) && i.admitted(now) && !i.asleep);
        let admitted = || self.least(|i| untried(&i) && i.admitted(now));
        let at = awake.or_else(admitted).or_else(|| self.least(|i| untried(&i)))?;
        self.cursor = (at + 1) % self.instances.len();
        let instance = &mut self.instances[at];
        instance.outstanding += 1;
        Some(instance.target.clone())
    }

    /// The eligible instance with the fewest outstanding requests, the first
    /// from the cursor on among equals.
    fn least(&self, eligible: impl Fn(&Instance<T>) -> bool) -> Option<usize> {
        let n = self.instances.len();
        (0..n)
            .map(|k| (self.cursor + k) % n)
            .filter(|&at| eligible(&self.instances[at]))
            .min_by_key(|&at| self.instances[at].outstanding)
    }

    /// A request picked for `target` is no longer outstanding.
    pub fn finish(&mut self, target: &T) {
        if let Some(i) = self.find(target) {
            i.outstanding = i.outstanding.saturating_sub(1);
        } else if let Some(at) = self.departed.iter().position(|i| &i.target == target) {
            let i = &mut self.departed[at];
            i.outstanding = i.outstanding.saturating_sub(1);
            if i.outstanding == 0 {
                self.departed.swap_remove(at);
            }
        }
    }

    /// Records what an attempt on `target` came to.
    pub fn record(&mut self, target: &T, outcome: Outcome, now: Instant) {
        let others_admitted = self.instances.iter().any(|i| &i.target != target && i.admitted(now));
        let Some(i) = self.find(target) else { return };
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

    /// Marks which instances sleep (the others are awake): a request
    /// picks a sleeper only when no awake instance can take it.
    pub fn set_asleep(&mut self, asleep: impl Fn(&T) -> bool) {
        for i in &mut self.instances {
            i.asleep = asleep(&i.target);
        }
    }

    /// Whether `target`'s machine sleeps, as last set.
    pub fn is_asleep(&self, target: &T) -> bool {
        self.instances.iter().any(|i| &i.target == target && i.asleep)
    }

    /// Whether `target` is ejected at `now`.
    pub fn is_ejected(&self, target: &T, now: Instant) -> bool {
        self.instances.iter().any(|i| &i.target == target && !i.admitted(now))
    }

    /// Requests outstanding on `target` (0 if it is not published).
    pub fn outstanding(&self, target: &T) -> u32 {
        self.instances.iter().find(|i| &i.target == target).map_or(0, |i| i.outstanding)
    }

    /// Failures of `target` since its last success.
    pub fn failures(&self, target: &T) -> u32 {
        self.instances.iter().find(|i| &i.target == target).map_or(0, |i| i.failures)
    }

    fn find(&mut self, target: &T) -> Option<&mut Instance<T>> {
        self.instances.iter_mut().find(|i| &i.target == target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(id: &str) -> String {
        id.to_owned()
    }

    fn balancer(ids: &[&str]) -> Balancer<String> {
        let mut b = Balancer::default();
        b.set(ids.iter().map(|id| endpoint(id)).collect());
        b
    }

    /// Picks and finishes at once, `n` times: the ids picked.
    fn picks(b: &mut Balancer<String>, now: Instant, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let e = b.pick(now, &[]).expect("an instance");
                b.finish(&e);
                e
            })
            .collect()
    }

    fn fail(b: &mut Balancer<String>, id: &str, times: u32, now: Instant) {
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
        assert!(!picked.contains(&slow), "{picked:?}");
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
        assert_eq!(b.pick(now, &tried), Some("a".to_owned()));
        let all = [endpoint("a"), endpoint("b"), endpoint("c")];
        assert_eq!(b.pick(now, &all), None, "every instance was tried");
    }

    #[test]
    fn an_instance_whose_machine_sleeps_takes_a_request_only_when_no_awake_one_is_left() {
        let now = Instant::now();
        let mut b = balancer(&["a", "b"]);
        b.set_asleep(|t| t == "b");
        assert!(b.is_asleep(&endpoint("b")) && !b.is_asleep(&endpoint("a")));
        // However busy the awake one is, the sleeper is left to sleep.
        let busy: Vec<String> = (0..3).map(|_| b.pick(now, &[]).expect("a")).collect();
        assert!(busy.iter().all(|e| e == "a"), "{busy:?}");
        // One the awake instance failed for goes to the sleeper.
        assert_eq!(b.pick(now, &[endpoint("a")]), Some(endpoint("b")));
        // Once awake, it takes its share again.
        b.set_asleep(|_| false);
        assert_eq!(b.pick(now, &[]), Some(endpoint("b")), "the idle one");
    }

    #[test]
    fn a_sleeper_is_woken_rather_than_an_ejected_instance_tried() {
        let now = Instant::now();
        let mut b = balancer(&["a", "b", "c"]);
        b.set_asleep(|t| t == "c");
        fail(&mut b, "a", FAILURES_TO_EJECT, now);
        assert!(b.is_ejected(&endpoint("a"), now));
        assert_eq!(b.pick(now, &[endpoint("b")]), Some(endpoint("c")));
        assert_eq!(b.pick(now, &[endpoint("b"), endpoint("c")]), Some(endpoint("a")), "rather than failing");
    }

    #[test]
    fn when_every_instance_sleeps_the_least_busy_is_woken() {
        let now = Instant::now();
        let mut b = balancer(&["a", "b"]);
        b.set_asleep(|_| true);
        let first = b.pick(now, &[]).expect("one");
        let second = b.pick(now, &[]).expect("the other");
        assert_ne!(first, second);
        // Published again, an instance keeps whether it sleeps until told.
        b.set(vec![endpoint("a"), endpoint("b"), endpoint("c")]);
        assert!(b.is_asleep(&endpoint("a")) && !b.is_asleep(&endpoint("c")));
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
        assert_eq!(b.pick(now, &[]), Some("c".to_owned()));
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

    #[test]
    fn an_instance_published_again_before_its_requests_finish_still_counts_them() {
        let now = Instant::now();
        let mut b = balancer(&["a", "b"]);
        let on_a = [b.pick(now, &[]).expect("a"), b.pick(now, &[]).expect("b"), b.pick(now, &[]).expect("a")];
        assert_eq!(on_a, ["a", "b", "a"]);
        // a leaves (one failed check) with two requests open, and comes back.
        b.set(vec![endpoint("b")]);
        assert_eq!(b.pick(now, &[]), Some("b".to_owned()), "a departed takes nothing");
        b.set(vec![endpoint("a"), endpoint("b")]);
        assert_eq!(b.outstanding(&endpoint("a")), 2);
        // b has 2 too now: a tie, not a's turn for being "idle".
        b.finish(&endpoint("a"));
        assert_eq!(b.pick(now, &[]), Some("a".to_owned()));
        // Once a departed instance's requests finish, it is forgotten.
        b.set(vec![endpoint("b")]);
        for _ in 0..2 {
            b.finish(&endpoint("a"));
        }
        b.set(vec![endpoint("a"), endpoint("b")]);
        assert_eq!(b.outstanding(&endpoint("a")), 0);
    }
}
