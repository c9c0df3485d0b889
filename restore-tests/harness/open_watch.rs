//! Who opened a file, seen by the kernel (inotify), not by asking the
//! process: a test that a role never opens a secret it must not hold.

use std::path::Path;

use rustix::fd::OwnedFd;
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

/// Counts opens of one file from the moment it is made.
pub struct OpenWatch {
    fd: OwnedFd,
    seen: std::cell::Cell<u64>,
}

impl OpenWatch {
    pub fn new(file: &Path) -> OpenWatch {
        let fd = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC).expect("inotify_init");
        inotify::add_watch(&fd, file, WatchFlags::OPEN).expect("watch the file");
        OpenWatch {
            fd,
            seen: std::cell::Cell::new(0),
        }
    }

    /// Opens of the file so far, by any process.
    pub fn opens(&self) -> u64 {
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut reader = inotify::Reader::new(&self.fd, &mut buf);
        loop {
            match reader.next() {
                Ok(e) if e.events().contains(ReadFlags::OPEN) => self.seen.set(self.seen.get() + 1),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        self.seen.get()
    }
}
