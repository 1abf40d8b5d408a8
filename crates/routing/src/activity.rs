//! What this host has seen of each machine's traffic, for machines that
//! sleep when idle: the connections open through its forwarded ports, a
//! service's published ports and the ingress, when the last one ended or
//! its name was last looked up, and whether it is dozing (going to sleep,
//! or asleep).
//!
//! The policy, which [`Activity::try_doze`] and [`Activity::open`] keep
//! together under one lock:
//!
//! - A machine with a connection open is not idle, however long it lasts,
//!   even one marked dozing.
//! - A machine is idle for the time since its last connection ended, or its
//!   name was looked up, or it woke, or this host first asked about it.
//! - It dozes only when it has been idle for at least the time asked, and
//!   a connection that opens afterwards finds it dozing and wakes it
//!   before it is passed through: no connection slips in between the
//!   decision and the sleep.
//! - Waking is the [`Waker`]'s (the machines service's) business; a machine
//!   that is not dozing needs none, and a connection to it costs one
//!   lookup in a map.
//! - A machine another host runs is never dozing here: a connection to it
//!   is woken through it when the registry says it sleeps ([`Activity::pass`]
//!   with `asleep`), and its own host judges its idleness by what it saw.
//! - A wake that takes longer than [`WAKE_TIMEOUT`] fails the connection
//!   that waits for it, with the reason.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// How long a connection is held for its machine to wake before it is
/// closed: a restore under software emulation takes about half a second,
/// a fresh boot when the restore fails several.
pub const WAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// Wakes a sleeping machine and returns once it runs (or why it could not).
pub trait Waker: Send + Sync {
    fn wake(&self, machine: &str) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'static>>;
}

/// A cheap-to-clone handle to this host's record of machines' traffic.
#[derive(Clone, Default)]
pub struct Activity {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    seen: Mutex<HashMap<String, Seen>>,
    /// Weak: the waker (the machines service) holds this registry.
    waker: OnceLock<Weak<dyn Waker>>,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Connections open now.
    open: usize,
    /// When the machine last stopped being idle.
    last: Instant,
    dozing: bool,
}

impl Seen {
    fn new(now: Instant) -> Seen {
        Seen { open: 0, last: now, dozing: false }
    }
}

impl std::fmt::Debug for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activity").finish_non_exhaustive()
    }
}

/// One connection to a machine, counted open until dropped.
#[derive(Debug)]
pub struct Open {
    activity: Activity,
    machine: String,
}

impl Drop for Open {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut seen = self.activity.lock();
        if let Some(entry) = seen.get_mut(&self.machine) {
            entry.open = entry.open.saturating_sub(1);
            entry.last = now;
        }
    }
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.inner.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Who wakes dozing machines; the first one set stays.
    pub fn set_waker(&self, waker: Weak<dyn Waker>) {
        let _ = self.inner.waker.set(waker);
    }

    /// Counts a connection to `machine` open; whether the machine is dozing,
    /// and so must be woken before the connection goes through.
    pub fn open(&self, machine: &str) -> (Open, bool) {
        let now = Instant::now();
        let mut seen = self.lock();
        let entry = seen.entry(machine.to_owned()).or_insert_with(|| Seen::new(now));
        entry.open += 1;
        entry.last = now;
        let dozing = entry.dozing;
        drop(seen);
        (Open { activity: self.clone(), machine: machine.to_owned() }, dozing)
    }

    /// Something reached for the machine without a connection (its name
    /// was looked up, a datagram passed): its idle time starts again.
    /// Whether it is dozing.
    pub fn touch(&self, machine: &str) -> bool {
        let now = Instant::now();
        let mut seen = self.lock();
        let entry = seen.entry(machine.to_owned()).or_insert_with(|| Seen::new(now));
        entry.last = now;
        entry.dozing
    }

    /// Marks the machine dozing if it has had no connection open for at
    /// least `idle`; whether it now dozes (a machine dozing already is
    /// judged by its idleness like any other). A machine this host never saw
    /// starts its idle time now.
    pub fn try_doze(&self, machine: &str, idle: Duration) -> bool {
        let now = Instant::now();
        let mut seen = self.lock();
        let entry = seen.entry(machine.to_owned()).or_insert_with(|| Seen::new(now));
        // Idleness alone decides: a dozing flag left from an earlier life
        // of the machine (or a stale pass) never puts it to sleep.
        if entry.open > 0 || now.duration_since(entry.last) < idle {
            return false;
        }
        entry.dozing = true;
        true
    }

    /// Marks the machine dozing whatever its traffic: it is asleep (found
    /// so at start-up), or put to sleep by hand.
    pub fn doze(&self, machine: &str) {
        let now = Instant::now();
        self.lock().entry(machine.to_owned()).or_insert_with(|| Seen::new(now)).dozing = true;
    }

    /// The machine is awake (or will not sleep after all): its idle time
    /// starts now.
    pub fn woke(&self, machine: &str) {
        let now = Instant::now();
        let mut seen = self.lock();
        let entry = seen.entry(machine.to_owned()).or_insert_with(|| Seen::new(now));
        entry.dozing = false;
        entry.last = now;
    }

    pub fn is_dozing(&self, machine: &str) -> bool {
        self.lock().get(machine).is_some_and(|s| s.dozing)
    }

    /// The machine is gone: what was seen of it goes too.
    pub fn forget(&self, machine: &str) {
        self.lock().remove(machine);
    }

    /// Wakes `machine` if it dozes, through the waker, and returns once
    /// it runs.
    pub async fn wake(&self, machine: &str) -> Result<(), String> {
        if !self.is_dozing(machine) {
            return Ok(());
        }
        self.rouse(machine).await
    }

    /// Passes one connection (or request) to `machine`: counts it open,
    /// and first wakes the machine if it dozes here or `asleep` says it
    /// sleeps (what the registry published, which knows of machines on
    /// other hosts too). Gives up after [`WAKE_TIMEOUT`], with the reason.
    pub async fn pass(&self, machine: &str, asleep: bool) -> Result<Open, String> {
        self.pass_within(machine, asleep, WAKE_TIMEOUT).await
    }

    async fn pass_within(&self, machine: &str, asleep: bool, limit: Duration) -> Result<Open, String> {
        let (open, dozing) = self.open(machine);
        if dozing || asleep {
            tracing::debug!(machine, "A connection is waking its machine.");
            match tokio::time::timeout(limit, self.rouse(machine)).await {
                Ok(woken) => woken?,
                Err(_) => {
                    return Err(format!("machine {machine} did not wake within {}s", limit.as_secs_f64()));
                }
            }
        }
        Ok(open)
    }

    /// Wakes `machine` through the waker, dozing here or not, and returns
    /// once it runs (at once for one that is awake).
    async fn rouse(&self, machine: &str) -> Result<(), String> {
        let waker = self.inner.waker.get().and_then(Weak::upgrade);
        let Some(waker) = waker else {
            return Err(format!("machine {machine} is asleep and nothing on this host can wake it"));
        };
        waker.wake(machine).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_with_a_connection_open_is_not_idle_however_long_it_lasts() {
        let activity = Activity::default();
        let (open, dozing) = activity.open("m");
        assert!(!dozing);
        assert!(!activity.try_doze("m", Duration::ZERO));
        drop(open);
        assert!(activity.try_doze("m", Duration::ZERO));
    }

    #[test]
    fn a_machine_is_idle_for_the_time_since_its_last_connection_ended() {
        let activity = Activity::default();
        let (open, _) = activity.open("m");
        std::thread::sleep(Duration::from_millis(60));
        drop(open);
        // Counted from the end, not the start, of the connection.
        assert!(!activity.try_doze("m", Duration::from_millis(40)));
        assert!(activity.try_doze("m", Duration::ZERO));
    }

    #[test]
    fn a_dozing_machine_with_a_connection_open_is_not_idle() {
        let activity = Activity::default();
        activity.doze("m");
        let (open, dozing) = activity.open("m");
        assert!(dozing);
        assert!(!activity.try_doze("m", Duration::ZERO));
        drop(open);
        assert!(activity.try_doze("m", Duration::ZERO));
    }

    #[test]
    fn a_machine_this_host_never_saw_starts_its_idle_time_at_the_first_question() {
        let activity = Activity::default();
        assert!(!activity.try_doze("m", Duration::from_secs(60)));
        assert!(!activity.is_dozing("m"));
    }

    #[test]
    fn a_lookup_of_its_name_starts_the_idle_time_again() {
        let activity = Activity::default();
        assert!(!activity.touch("m"));
        assert!(!activity.try_doze("m", Duration::from_secs(60)));
    }

    #[test]
    fn a_connection_that_opens_after_the_decision_finds_it_dozing() {
        let activity = Activity::default();
        assert!(activity.try_doze("m", Duration::ZERO));
        let (_open, dozing) = activity.open("m");
        assert!(dozing, "the connection must wake it first");
        assert!(activity.touch("m"));
    }

    #[test]
    fn a_woken_machine_is_idle_from_its_waking() {
        let activity = Activity::default();
        activity.doze("m");
        activity.woke("m");
        assert!(!activity.is_dozing("m"));
        assert!(!activity.try_doze("m", Duration::from_secs(60)));
    }

    struct Counting(std::sync::atomic::AtomicUsize, Activity);

    impl Waker for Counting {
        fn wake(&self, machine: &str) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'static>> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (activity, machine) = (self.1.clone(), machine.to_owned());
            Box::pin(async move {
                activity.woke(&machine);
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn a_machine_that_is_not_dozing_needs_no_waking() {
        let activity = Activity::default();
        let counting = Arc::new(Counting(Default::default(), activity.clone()));
        let waker: Arc<dyn Waker> = counting.clone();
        activity.set_waker(Arc::downgrade(&waker));
        activity.wake("m").await.expect("nothing to do");
        activity.doze("m");
        activity.wake("m").await.expect("woken");
        activity.wake("m").await.expect("nothing to do");
        assert_eq!(counting.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_to_a_machine_the_registry_says_sleeps_wakes_it_through_the_waker() {
        let activity = Activity::default();
        let counting = Arc::new(Counting(Default::default(), activity.clone()));
        let waker: Arc<dyn Waker> = counting.clone();
        activity.set_waker(Arc::downgrade(&waker));
        let open = activity.pass("m", false).await.expect("awake: passed at once");
        assert_eq!(counting.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(!activity.try_doze("m", Duration::ZERO), "counted open");
        drop(open);
        // Not dozing here (another host runs it), but published asleep.
        let _open = activity.pass("m", true).await.expect("woken");
        assert_eq!(counting.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        activity.doze("m");
        let _again = activity.pass("m", false).await.expect("woken");
        assert_eq!(counting.0.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    struct Never;

    impl Waker for Never {
        fn wake(&self, _: &str) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'static>> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test]
    async fn a_wake_that_takes_longer_than_the_timeout_fails_the_connection_with_the_reason() {
        let activity = Activity::default();
        let waker: Arc<dyn Waker> = Arc::new(Never);
        activity.set_waker(Arc::downgrade(&waker));
        let error = activity.pass_within("m", true, Duration::from_millis(50)).await.expect_err("never woke");
        assert!(error.contains("did not wake within 0.05s"), "{error}");
    }

    #[tokio::test]
    async fn without_a_waker_a_dozing_machine_cannot_be_woken() {
        let activity = Activity::default();
        activity.doze("m");
        let error = activity.wake("m").await.expect_err("no waker");
        assert!(error.contains("asleep"), "{error}");
    }
}
