//! The volume drill: restore into a scratch directory with setuid bits and
//! `security.*` attributes left out (a drill must not plant privileges on
//! the machine it runs on), read every file back and compare each chunk's
//! keyed id with the manifest's, then run the target's probe on the
//! restored directory: bytes right is not yet "the database starts".

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::fs::OFlags;
use serde_json::json;

use super::report::CheckStatus;
use super::{Env, Outcome, Phase, Stopwatch, Target};
use crate::error::{Error, ErrorKind, Result};
use crate::repo::manifest::{Entry, EntryKind, Manifest};
use crate::restore::beneath::Beneath;
use crate::restore::volume::{Options, Target as Into, restore};

/// Paths listed in evidence, at most.
const LISTED: usize = 20;

pub(super) fn drill(env: &Env, t: &Target, dir: &Path, watch: &mut Stopwatch, out: &mut Outcome) {
    out.scratch.push(format!("dir:{}", dir.display()));
    let mut manifest = t.manifest.clone();
    let filled = super::fill_listing(env, &mut manifest);
    watch.lap(Phase::FetchDecrypt);
    if let Err(e) = filled {
        return out.fail(t, Phase::FetchDecrypt, &e);
    }
    let manifest = &manifest;
    let block = manifest.entries.iter().any(|e| e.kind == EntryKind::Block);
    let (into, root) = if block {
        let image = dir.join("volume.img");
        (
            Into::Block {
                path: image.clone(),
                force: false,
            },
            image,
        )
    } else {
        let root = dir.join("data");
        (
            Into::Dir {
                path: root.clone(),
                force: false,
            },
            root,
        )
    };
    let read_before = env.timed.busy();
    let restored = restore(
        env.repo,
        manifest,
        &into,
        Options { no_setuid: true },
        &|_| {},
    );
    watch.split(env.timed.busy().saturating_sub(read_before));
    let summary = match restored {
        Ok(s) => s,
        Err(e) => return out.fail(t, Phase::FetchDecrypt.or_write(&e), &e),
    };
    out.bytes = summary.bytes;
    out.objects = summary.files;

    if out.wants(t, "file_digests") {
        let began = Instant::now();
        match file_digests(env, manifest, &root, block) {
            Ok((files, bytes, differ)) => {
                let ok = differ.is_empty();
                out.check(
                    t,
                    "file_digests",
                    CheckStatus::of(ok),
                    began,
                    if ok {
                        format!(
                            "{files} files ({bytes} bytes) read back: every chunk's keyed id as the \
                             manifest records"
                        )
                    } else {
                        format!("{} of {files} files differ from the backup", differ.len())
                    },
                    json!({
                        "files": files,
                        "bytes": bytes,
                        "setuid_dropped": summary.dropped.len(),
                        "differ": differ.iter().take(LISTED).collect::<Vec<_>>(),
                    }),
                );
            }
            Err(e) => {
                watch.lap(Phase::Checks);
                return out.fail(t, Phase::Checks, &e);
            }
        }
        watch.lap(Phase::Checks);
    }

    if let Some(probe) = &t.probe
        && out.wants(t, "probe")
    {
        let began = Instant::now();
        let (status, summary, evidence) = run_probe(probe, &root);
        out.check(t, "probe", status, began, summary, evidence);
        watch.lap(Phase::Checks);
    }
}

impl Phase {
    /// Where a restore that failed with `e` stopped: reading (a pack that
    /// did not verify or could not be read) or writing.
    fn or_write(self, e: &Error) -> Phase {
        match e.kind() {
            ErrorKind::Integrity
            | ErrorKind::Unavailable
            | ErrorKind::NotFound
            | ErrorKind::Permission => self,
            _ => Phase::Write,
        }
    }
}

/// Reads every restored file (or the image) and checks each chunk of it
/// against the id the manifest records: files, bytes, and the paths that
/// differ.
fn file_digests(
    env: &Env,
    manifest: &Manifest,
    root: &Path,
    block: bool,
) -> Result<(u64, u64, Vec<String>)> {
    let beneath = if block {
        None
    } else {
        Some(Beneath::open(root).map_err(|e| {
            Error::io(
                e,
                ErrorKind::Failed,
                format!("cannot open {}", root.display()),
            )
        })?)
    };
    let (mut files, mut bytes, mut differ) = (0u64, 0u64, Vec::new());
    let mut buf = Vec::new();
    for e in manifest
        .entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::File | EntryKind::Block))
    {
        files += 1;
        let file = match &beneath {
            Some(b) => crate::restore::volume::rel_path(e).and_then(|p| {
                b.open_at(&p, OFlags::RDONLY, 0).map_err(|err| {
                    Error::io(err, ErrorKind::Failed, format!("cannot open {}", e.path))
                })
            }),
            None => std::fs::File::open(root).map_err(|err| {
                Error::io(
                    err,
                    ErrorKind::Failed,
                    format!("cannot open {}", root.display()),
                )
            }),
        };
        match file.and_then(|f| same_chunks(env, manifest, e, f, &mut buf)) {
            Ok(n) => bytes += n,
            Err(_) => differ.push(crate::restore::volume::display_path(e)),
        }
    }
    Ok((files, bytes, differ))
}

/// Reads `e`'s extents from `f` chunk by chunk and compares ids; the bytes
/// read, or an error at the first difference.
fn same_chunks(
    env: &Env,
    manifest: &Manifest,
    e: &Entry,
    f: std::fs::File,
    buf: &mut Vec<u8>,
) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut read = 0;
    for x in &e.extents {
        let mut at = x.offset;
        for &c in &x.chunks {
            let loc = &manifest.chunks[c as usize];
            buf.resize(loc.raw_length as usize, 0);
            f.read_exact_at(buf, at).map_err(|err| {
                Error::io(err, ErrorKind::Integrity, format!("{} is short", e.path))
            })?;
            if env.repo.secret.chunk_id(buf) != loc.id {
                return Err(Error::new(
                    ErrorKind::Integrity,
                    format!("{} differs at byte {at}", e.path),
                ));
            }
            at += u64::from(loc.raw_length);
            read += u64::from(loc.raw_length);
        }
    }
    Ok(read)
}

/// Runs the probe with the restored path; passes on exit 0 in time. Its
/// output is not put in the report (it may print data), only the exit and,
/// on failure, its last line of stderr.
fn run_probe(probe: &super::Probe, root: &Path) -> (CheckStatus, String, serde_json::Value) {
    let path = root.display().to_string();
    let args: Vec<String> = probe
        .command
        .iter()
        .map(|a| a.replace("{path}", &path))
        .collect();
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..])
        .env("DRCTL_RESTORED_PATH", &path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    crate::sys::kill_with_parent(&mut cmd);
    let program = Path::new(&args[0])
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return (
                CheckStatus::Failed,
                format!("the probe {program} did not start: {e}"),
                json!({"program": program}),
            );
        }
    };
    let mut stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.take(64 * 1024).read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now() + Duration::from_secs(probe.timeout_seconds);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let said = reader.join().unwrap_or_default();
    let last = said
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let last: String = last.chars().take(200).collect();
    match status {
        Some(s) if s.success() => (
            CheckStatus::Passed,
            format!("the probe {program} passed on the restored data"),
            json!({"program": program, "exit_code": 0}),
        ),
        Some(s) => (
            CheckStatus::Failed,
            format!("the probe {program} failed ({s}): {last}"),
            json!({"program": program, "exit_code": s.code()}),
        ),
        None => (
            CheckStatus::Failed,
            format!(
                "the probe {program} did not finish within {} s",
                probe.timeout_seconds
            ),
            json!({"program": program, "timed_out": true}),
        ),
    }
}
