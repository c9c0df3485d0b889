//! Work spread over threads: a queue of items taken by a few scoped threads,
//! stopped at the first error.
//!
//! Restores, verification and catalog rebuilds all read packs where one
//! pack is independent of the next. Each had grown its own queue, failure
//! slot and thread loop; this is the one copy, so the stop-at-first-error
//! rule is the same everywhere.
//!
//! Not used for creating a restore's files or setting their metadata:
//! spread over threads, that was slower (contention inside ext4), measured
//! on a fresh and on an aged file system.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::Result;

/// Threads for reading packs (decompressing, hashing, writing out): one per
/// core, and at least two, so that one thread waiting on a read does not
/// leave the machine idle.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

/// Calls `f` on every item from `threads` threads, each with its own state
/// made by `init` (a decompressor, a buffer). After the first error no new
/// item is started, and that error is returned once the items in progress
/// finish.
pub fn try_for_each<I, S, F>(
    items: I,
    threads: usize,
    init: impl Fn() -> S + Sync,
    f: F,
) -> Result<()>
where
    I: IntoIterator,
    I::IntoIter: Send,
    I::Item: Send,
    F: Fn(&mut S, I::Item) -> Result<()> + Sync,
{
    let queue = Mutex::new(items.into_iter());
    let failure = Mutex::new(None);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut state = init();
                while !stop.load(Ordering::Relaxed) {
                    // Bind, so the queue's guard is dropped before the work.
                    let next = queue.lock().unwrap().next();
                    let Some(item) = next else { return };
                    if let Err(e) = f(&mut state, item) {
                        stop.store(true, Ordering::Relaxed);
                        failure.lock().unwrap().get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    match failure.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Error, ErrorKind};
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_item_is_done_once() {
        let sum = AtomicUsize::new(0);
        try_for_each(
            1..=1000usize,
            3,
            || (),
            |_, i| {
                sum.fetch_add(i, Ordering::Relaxed);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(sum.into_inner(), 500_500);
    }

    #[test]
    fn the_first_error_stops_the_rest() {
        let done = AtomicUsize::new(0);
        let err = try_for_each(
            0..10_000usize,
            2,
            || (),
            |_, i| {
                if i == 10 {
                    return Err(Error::new(ErrorKind::Failed, "item 10 failed"));
                }
                done.fetch_add(1, Ordering::Relaxed);
                Ok(())
            },
        )
        .unwrap_err();
        assert_eq!(err.what(), "item 10 failed");
        assert!(done.into_inner() < 10_000);
    }
}
