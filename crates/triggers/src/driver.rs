//! The cron driver: once a second, on the second, it asks a subsystem for
//! its cron triggers, works out which firing each one owes ([`crate::due`],
//! with its catch-up policy), records the firing in the store and has the
//! subsystem fire it. Apps and workflows supply only what a firing does
//! ([`CronTarget::fire`]: call a route, start a run).
//!
//! A trigger's last firing is kept at its [`CronJob::state_key`] as a
//! [`CronState`], written by compare-and-swap and only while the trigger's
//! [`CronJob::source_key`] exists: two daemons on one store fire a slot once
//! between them, and a trigger removed while it fires leaves no state
//! behind. A new or changed schedule starts from now (no firings for the
//! past).

use std::sync::Arc;
use std::time::Duration;

use hearth_store::{Compare, Op, Store, Txn};
use tokio::sync::watch;

use crate::{CronState, Due, Schedule, chain, now_ms};

/// One cron trigger, as the driver sees it.
#[derive(Debug, Clone)]
pub struct CronJob<J> {
    /// Whose trigger it is (an app's or a workflow's name), for logs.
    pub owner: String,
    /// Where its last firing is kept.
    pub state_key: String,
    /// A key that exists as long as the trigger does (the record of the
    /// manifest that declares it, or the stored trigger).
    pub source_key: String,
    pub schedule: String,
    pub timezone: String,
    /// What the subsystem needs to fire it.
    pub job: J,
}

/// How a subsystem's firings are made safe against a crash and against a
/// second daemon on the same store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantee {
    /// The firing is recorded before it is fired: a crash between the two
    /// loses that firing, never repeats it. For apps, whose calls have
    /// effects hearth cannot take back.
    AtMostOnce,
    /// The firing is fired, then recorded: a crash between the two fires it
    /// again, so [`CronTarget::fire`] must be idempotent per slot (a run id
    /// made of the slot). Together, exactly once. For workflows.
    Idempotent,
}

/// What a subsystem supplies to the cron driver.
pub trait CronTarget: Send + Sync + 'static {
    /// What [`CronTarget::fire`] needs of one trigger.
    type Job: Send + Sync + 'static;
    type Error: std::error::Error + Send + Sync + 'static;
    /// How its firings are made safe.
    const GUARANTEE: Guarantee;

    /// Every cron trigger now (read again each second, so added and removed
    /// ones are seen without a restart).
    fn jobs(&self) -> impl Future<Output = Result<Vec<CronJob<Self::Job>>, Self::Error>> + Send;

    /// Does what a firing of `job` at `due.slot` does. `due.skipped` firings
    /// were missed while hearth was down and are not fired; say so where
    /// the user looks.
    fn fire(
        &self,
        job: &CronJob<Self::Job>,
        due: Due,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Why a cron trigger could not be checked or fired.
#[derive(Debug, thiserror::Error)]
pub enum Error<E: std::error::Error + 'static> {
    #[error("the schedule is not valid: {0}")]
    Schedule(String),
    #[error("the last firing at {key} is unreadable")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Store(#[from] hearth_store::Error),
    #[error(transparent)]
    Fire(E),
}

/// Fires `target`'s cron triggers, each second on the second, until
/// `shutdown`. Firings that fell before this call were missed while hearth
/// was down: they collapse into one (see [`crate::due`]).
pub async fn run<T: CronTarget>(target: T, store: Arc<dyn Store>, mut shutdown: watch::Receiver<bool>) {
    let started = now_ms();
    loop {
        tick(&target, store.as_ref(), now_ms(), started).await;
        // Each second, on the second: six-field schedules have seconds.
        let into_second = now_ms() % 1000;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(1000 - into_second + 5)) => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
    }
}

/// One pass over every cron trigger at `now`, given that firing began at
/// `started`. One trigger that cannot fire stops no other.
pub async fn tick<T: CronTarget>(target: &T, store: &dyn Store, now: u64, started: u64) {
    let jobs = match target.jobs().await {
        Ok(jobs) => jobs,
        Err(e) => {
            tracing::warn!(error = %chain(&e), "Cron triggers could not be read.");
            return;
        }
    };
    for job in &jobs {
        if let Err(e) = step(target, store, job, now, started).await {
            tracing::warn!(owner = %job.owner, schedule = %job.schedule, error = %chain(&e), "A cron trigger could not fire.");
        }
    }
}

/// Checks one trigger and fires what it owes.
async fn step<T: CronTarget>(
    target: &T,
    store: &dyn Store,
    job: &CronJob<T::Job>,
    now: u64,
    started: u64,
) -> Result<(), Error<T::Error>> {
    let schedule = Schedule::parse(&job.schedule, &job.timezone).map_err(Error::Schedule)?;
    let (state, revision) = match store.get(&job.state_key).await? {
        Some(kv) => {
            let state = serde_json::from_slice::<CronState>(&kv.value)
                .map_err(|source| Error::Corrupt { key: job.state_key.clone(), source })?;
            (Some(state), kv.mod_revision)
        }
        None => (None, 0),
    };
    let record = |last: u64| {
        let state = CronState { schedule: job.schedule.clone(), timezone: job.timezone.clone(), last };
        let value = serde_json::to_vec(&state).expect("a cron state serialises");
        Txn::new()
            .when(Compare::mod_revision(&job.state_key, revision))
            .when(Compare::exists(&job.source_key))
            .and_then(Op::Put { key: job.state_key.clone(), value, lease: None })
    };
    let Some(last) = state.and_then(|s| s.last_for(&job.schedule, &job.timezone)) else {
        store.txn(record(now)).await?;
        return Ok(());
    };
    let Some(due) = crate::due(&schedule, last, now, started) else { return Ok(()) };
    match T::GUARANTEE {
        Guarantee::AtMostOnce => {
            // Recorded first, by one daemon only.
            if store.txn(record(due.slot)).await?.succeeded {
                target.fire(job, due).await.map_err(Error::Fire)?;
            }
        }
        Guarantee::Idempotent => {
            target.fire(job, due).await.map_err(Error::Fire)?;
            store.txn(record(due.slot)).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const MINUTE: u64 = 60_000;
    /// 2026-01-01T00:00:00Z.
    const T0: u64 = 1_767_225_600_000;

    /// Records what it was asked to fire; fails when told to.
    struct Recorder<const IDEMPOTENT: bool> {
        fired: Mutex<Vec<Due>>,
        fail: Mutex<bool>,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("the firing failed")]
    struct Failed;

    impl<const IDEMPOTENT: bool> CronTarget for Recorder<IDEMPOTENT> {
        type Job = ();
        type Error = Failed;
        const GUARANTEE: Guarantee = if IDEMPOTENT { Guarantee::Idempotent } else { Guarantee::AtMostOnce };

        async fn jobs(&self) -> Result<Vec<CronJob<()>>, Failed> {
            Ok(vec![CronJob {
                owner: "a".into(),
                state_key: "t/cron/a/0".into(),
                source_key: "t/records/a".into(),
                schedule: "* * * * *".into(),
                timezone: "UTC".into(),
                job: (),
            }])
        }

        async fn fire(&self, _: &CronJob<()>, due: Due) -> Result<(), Failed> {
            if *self.fail.lock().unwrap() {
                return Err(Failed);
            }
            self.fired.lock().unwrap().push(due);
            Ok(())
        }
    }

    fn recorder<const I: bool>() -> Recorder<I> {
        Recorder { fired: Mutex::default(), fail: Mutex::new(false) }
    }

    async fn new_store() -> (tempfile::TempDir, hearth_store::redb::RedbStore) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            hearth_store::redb::RedbStore::open(&dir.path().join("s.redb"), Default::default()).unwrap();
        store.put("t/records/a", b"{}".to_vec(), None).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn a_new_schedule_starts_from_now_then_fires_each_slot_once() {
        let (_dir, store) = new_store().await;
        let target = recorder::<false>();
        tick(&target, &store, T0 + 1, T0).await;
        assert!(target.fired.lock().unwrap().is_empty(), "a new schedule fired for the past");
        tick(&target, &store, T0 + MINUTE, T0).await;
        tick(&target, &store, T0 + MINUTE + 500, T0).await;
        assert_eq!(*target.fired.lock().unwrap(), [Due { slot: T0 + MINUTE, skipped: 0 }]);
        store.shutdown().await;
    }

    #[tokio::test]
    async fn firings_missed_while_down_collapse_into_one() {
        let (_dir, store) = new_store().await;
        let target = recorder::<false>();
        tick(&target, &store, T0, T0).await;
        // Down from T0 until T0 + 10.5 minutes.
        let back = T0 + 10 * MINUTE + MINUTE / 2;
        tick(&target, &store, back, back).await;
        tick(&target, &store, back + 1, back).await;
        assert_eq!(*target.fired.lock().unwrap(), [Due { slot: T0 + 10 * MINUTE, skipped: 9 }]);
        store.shutdown().await;
    }

    #[tokio::test]
    async fn two_daemons_on_one_store_fire_a_slot_once() {
        let (_dir, store) = new_store().await;
        let (one, two) = (recorder::<false>(), recorder::<false>());
        tick(&one, &store, T0, T0).await;
        tick(&one, &store, T0 + MINUTE, T0).await;
        tick(&two, &store, T0 + MINUTE, T0).await;
        let fired = one.fired.lock().unwrap().len() + two.fired.lock().unwrap().len();
        assert_eq!(fired, 1);
        store.shutdown().await;
    }

    #[tokio::test]
    async fn nothing_is_recorded_for_a_trigger_that_is_gone() {
        let (_dir, store) = new_store().await;
        store.delete("t/records/a").await.unwrap();
        let target = recorder::<false>();
        tick(&target, &store, T0, T0).await;
        assert!(store.get("t/cron/a/0").await.unwrap().is_none());
        store.shutdown().await;
    }

    #[tokio::test]
    async fn an_idempotent_firing_that_fails_is_fired_again() {
        let (_dir, store) = new_store().await;
        let target = recorder::<true>();
        tick(&target, &store, T0, T0).await;
        *target.fail.lock().unwrap() = true;
        tick(&target, &store, T0 + MINUTE, T0).await;
        *target.fail.lock().unwrap() = false;
        tick(&target, &store, T0 + MINUTE + 1, T0).await;
        assert_eq!(*target.fired.lock().unwrap(), [Due { slot: T0 + MINUTE, skipped: 0 }]);
        // An at-most-once firing that fails is not fired again.
        let (_dir2, store2) = new_store().await;
        let once = recorder::<false>();
        tick(&once, &store2, T0, T0).await;
        *once.fail.lock().unwrap() = true;
        tick(&once, &store2, T0 + MINUTE, T0).await;
        *once.fail.lock().unwrap() = false;
        tick(&once, &store2, T0 + MINUTE + 1, T0).await;
        assert!(once.fired.lock().unwrap().is_empty());
        store.shutdown().await;
        store2.shutdown().await;
    }
}
