//! Faults (partitions, delays, losses): checked and recorded at
//! `faults/ID`, applied at once so that one the host cannot make is
//! refused, and healed by hand or when they expire.

use std::time::Duration;

use super::{Error, Networks, decode};
use crate::record::{self, FaultKind, FaultRecord, now_unix};

impl Networks {
    pub async fn faults(&self) -> Result<Vec<FaultRecord>, Error> {
        let range = self.inner.store.range(record::FAULTS).await?;
        range.kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect()
    }

    /// Injects a fault; with `lasting`, it heals itself after that long.
    pub async fn add_fault(&self, kind: FaultKind, lasting: Option<Duration>) -> Result<FaultRecord, Error> {
        let machines = self.machines().await?;
        for name in kind.machines() {
            if !machines.iter().any(|m| m.name == name && !m.spec.nics.is_empty()) {
                return Err(Error::NoSuchMachine(name.into()));
            }
        }
        match &kind {
            FaultKind::Partition { machines, from, .. } => {
                if machines.is_empty() || from.is_empty() {
                    return Err(Error::Invalid("a partition needs machines on both sides".into()));
                }
                if let Some(both) = machines.iter().find(|m| from.contains(m)) {
                    return Err(Error::Invalid(format!(
                        "machine {both:?} is on both sides of the partition"
                    )));
                }
            }
            FaultKind::Loss { percent, .. } if !(0.0..=100.0).contains(percent) || percent.is_nan() => {
                return Err(Error::Invalid(format!("loss {percent}% is not a percentage from 0 to 100")));
            }
            FaultKind::Delay { delay, jitter, .. } if *delay > Duration::from_secs(60) || jitter > delay => {
                return Err(Error::Invalid(
                    "use a delay up to 60s and a jitter no larger than the delay".into(),
                ));
            }
            _ => {}
        }
        let id = format!("f{:x}", now_nanos() & 0xff_ffff);
        let now = now_unix();
        let rec = FaultRecord {
            id: id.clone(),
            kind,
            expires_at: lasting.map(|d| now + d.as_secs().max(1)),
            created_at: now,
        };
        let value = serde_json::to_vec(&rec).map_err(|e| Error::Corrupt(id.clone(), e))?;
        self.inner.store.put(&record::fault_key(&id), value, None).await?;
        // Applied now, so that a fault this host cannot make (a delay on a
        // kernel with neither netem nor NFQUEUE) is refused rather than
        // silently absent.
        let applied = {
            let _one = self.inner.applying.lock().await;
            self.apply_inner().await
        };
        if let Err(error) = applied {
            self.inner.store.delete(&record::fault_key(&id)).await?;
            self.apply().await;
            return Err(error);
        }
        Ok(rec)
    }

    /// Heals one fault, or all of them. Returns how many were healed.
    pub async fn heal(&self, id: Option<&str>) -> Result<usize, Error> {
        let faults = self.faults().await?;
        let chosen: Vec<&FaultRecord> = match id {
            Some(id) => {
                let found: Vec<_> = faults.iter().filter(|f| f.id == id).collect();
                if found.is_empty() {
                    return Err(Error::FaultNotFound(id.into()));
                }
                found
            }
            None => faults.iter().collect(),
        };
        for fault in &chosen {
            self.inner.store.delete(&record::fault_key(&fault.id)).await?;
        }
        self.apply().await;
        Ok(chosen.len())
    }

    pub(super) async fn expire_faults(&self) {
        let Ok(faults) = self.faults().await else { return };
        let now = now_unix();
        let mut expired = false;
        for fault in faults.iter().filter(|f| f.expires_at.is_some_and(|t| t <= now)) {
            tracing::info!(fault = fault.id, what = fault.kind.describe(), "Fault healed itself.");
            let _ = self.inner.store.delete(&record::fault_key(&fault.id)).await;
            expired = true;
        }
        if expired {
            self.apply().await;
        }
    }
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}
