//! The few system calls std does not wrap, behind safe functions. This is the
//! only module allowed `unsafe`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

/// Data regions `(offset, length)` of a file, skipping holes (SEEK_DATA /
/// SEEK_HOLE). Falls back to one region when the file system cannot tell.
pub fn data_extents(file: &std::fs::File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    if size == 0 {
        return Ok(Vec::new());
    }
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut off: i64 = 0;
    while (off as u64) < size {
        // SAFETY: lseek on a file descriptor we own; no memory is touched.
        let data = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
        if data < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENXIO) => Ok(out),
                Some(libc::EINVAL) if out.is_empty() => Ok(vec![(0, size)]),
                _ => Err(err),
            };
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let end = (hole as u64).min(size);
        if end > data as u64 {
            out.push((data as u64, end - data as u64));
        }
        off = hole;
    }
    Ok(out)
}

/// Whether the process runs as root (and so can restore ownership).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Gives memory the allocator holds but nobody uses back to the system.
///
/// glibc keeps what a thread frees in that thread's arena. After a backup's
/// pipeline, its chunk buffers (about 100 MiB with both cores busy) would
/// stay resident under the manifest and catalog work that follows, adding
/// that work's memory on top of theirs for the peak.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Makes a child started from `cmd` receive SIGKILL when this process dies,
/// so a throwaway service never outlives a drctl that was killed. (The
/// signal follows the thread that spawned it; callers spawn from a thread
/// that outlives the child.)
pub fn kill_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
