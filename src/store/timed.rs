//! A store that measures how long reads keep it busy: the wall time during
//! which at least one read is in flight, however many run at once. A drill
//! splits its restore time with it into fetching (the store was being
//! read) and the rest (decrypting, decompressing, writing while no read
//! waited), phases that add up to the restore's wall time.
//!
//! Every call is passed through unchanged; only reads are timed.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::{Debris, ObjectMeta, PutOptions, Store, Version};
use crate::error::Result;

pub struct Timed {
    inner: Arc<dyn Store>,
    state: Mutex<Busy>,
}

#[derive(Default)]
struct Busy {
    in_flight: usize,
    since: Option<Instant>,
    total: Duration,
}

impl Timed {
    pub fn new(inner: Arc<dyn Store>) -> Timed {
        Timed {
            inner,
            state: Mutex::new(Busy::default()),
        }
    }

    /// Wall time with a read in flight since the store was made, the read
    /// going now included.
    pub fn busy(&self) -> Duration {
        let s = self.state.lock().unwrap();
        s.total + s.since.map_or(Duration::ZERO, |t| t.elapsed())
    }

    fn timed<T>(&self, read: impl FnOnce() -> T) -> T {
        {
            let mut s = self.state.lock().unwrap();
            if s.in_flight == 0 {
                s.since = Some(Instant::now());
            }
            s.in_flight += 1;
        }
        let out = read();
        let mut s = self.state.lock().unwrap();
        s.in_flight -= 1;
        if s.in_flight == 0
            && let Some(t) = s.since.take()
        {
            s.total += t.elapsed();
        }
        out
    }
}

impl Store for Timed {
    fn put(&self, key: &str, data: &[u8], opts: &PutOptions) -> Result<ObjectMeta> {
        self.inner.put(key, data, opts)
    }
    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.timed(|| self.inner.get(key))
    }
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        self.timed(|| self.inner.get_range(key, range))
    }
    fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.inner.head(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str, version: Option<&str>) -> Result<()> {
        self.inner.delete(key, version)
    }
    fn head_version(&self, key: &str, version: Option<&str>) -> Result<Option<ObjectMeta>> {
        self.inner.head_version(key, version)
    }
    fn get_version(&self, key: &str, version: &str) -> Result<Vec<u8>> {
        self.timed(|| self.inner.get_version(key, version))
    }
    fn versions(&self, key: &str) -> Result<Vec<Version>> {
        self.inner.versions(key)
    }
    fn read(&self, key: &str, version: Option<&str>, limit: u64) -> Result<Vec<u8>> {
        self.timed(|| self.inner.read(key, version, limit))
    }
    fn extend_retention(
        &self,
        key: &str,
        version: Option<&str>,
        until: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>> {
        self.inner.extend_retention(key, version, until)
    }
    fn location(&self) -> String {
        self.inner.location()
    }
    fn debris(&self) -> Result<Vec<Debris>> {
        self.inner.debris()
    }
    fn remove_debris(&self, id: &str) -> Result<()> {
        self.inner.remove_debris(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Overlapping reads count once: busy time is wall time, not the sum.
    #[test]
    fn overlapping_reads_count_as_wall_time() {
        let dir = tempfile::tempdir().unwrap();
        let t = Arc::new(Timed::new(Arc::new(super::super::local::LocalStore::new(
            dir.path(),
        ))));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    t.timed(|| std::thread::sleep(Duration::from_millis(200)))
                })
            })
            .collect();
        threads.into_iter().for_each(|h| h.join().unwrap());
        let busy = t.busy();
        assert!(busy >= Duration::from_millis(200), "{busy:?}");
        assert!(busy < Duration::from_millis(700), "{busy:?}");
    }
}
