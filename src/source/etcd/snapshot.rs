//! The snapshot stream, into the write pipeline.
//!
//! etcd sends its bbolt file in messages of 32 KiB whose `remaining_bytes`
//! counts down to 0, then one more message (also `remaining_bytes` 0) with
//! the SHA-256 of the file. A reader that stops at the first 0 drops that
//! trailer, and `etcdutl snapshot restore` then refuses the file; so the
//! stream is read to its end, the trailer checked against the bytes as they
//! passed, and stored after them: the restored file is byte for byte what
//! `etcdctl snapshot save` would have written.
//!
//! Nothing is held beyond the chunk being filled: bytes go to the pipeline,
//! the hasher and the page scanner ([`super::bbolt`]) as they arrive.
//! Chunks are fixed-size, as for block images: bbolt rewrites pages in place
//! and only grows at the end, so fixed boundaries stay put from one snapshot
//! to the next and a changed page costs one chunk.

use std::time::Duration;

use etcd_client::SnapshotStreaming;
use sha2::{Digest, Sha256};

use super::bbolt::{Facts, Scanner};
use crate::error::{Error, ErrorKind, Result};
use crate::repo::writer::{Job, Sink};

/// Chunk size of snapshots: bbolt changes a few scattered 4 KiB pages per
/// commit, so chunks much larger than this made consecutive snapshots share
/// less (docs/etcd.md has the measurements).
pub const SNAPSHOT_CHUNK: usize = 256 * 1024;

/// A stream that sends nothing for this long is given up.
const IDLE: Duration = Duration::from_secs(60);

/// The bytes of the SHA-256 trailer.
pub const TRAILER: usize = 32;

/// What was streamed: sizes, the snapshot's facts and the chunks sent.
#[derive(Debug)]
pub struct Streamed {
    /// Size of the bbolt file (the stored stream is this plus the trailer).
    pub db_size: u64,
    pub facts: Facts,
    /// Tag and length of each chunk sent, in stream order.
    pub chunks: Vec<(u64, u64)>,
}

/// Reads `stream` to its end into `sink`, checking sizes and the trailer.
/// `endpoint` names the member in errors; `progress` is told of bytes.
pub fn read(
    mut stream: SnapshotStreaming,
    handle: &tokio::runtime::Handle,
    endpoint: &str,
    sink: &Sink,
    progress: &dyn Fn(u64),
) -> Result<Streamed> {
    let mut hasher = Sha256::new();
    let mut scanner = Scanner::new();
    let mut expected: Option<u64> = None;
    let mut received = 0u64;
    let mut trailer: Vec<u8> = Vec::new();
    let mut db_done = false;
    let mut chunks = Vec::new();
    let mut buf = new_buffer(sink);
    let broke = |received: u64, what: String| {
        Error::new(
            ErrorKind::Unavailable,
            format!("the snapshot stream from {endpoint} broke after {received} bytes: {what}"),
        )
        .with_guidance("the backup is marked failed; run it again (another member is chosen if this one is unhealthy)")
    };
    loop {
        let next = handle.block_on(async { tokio::time::timeout(IDLE, stream.message()).await });
        let msg = match next {
            Err(_) => {
                return Err(broke(
                    received,
                    format!("nothing arrived for {} s", IDLE.as_secs()),
                ));
            }
            Ok(Err(e)) => return Err(broke(received, e.to_string())),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(m))) => m,
        };
        let blob = msg.blob();
        if db_done {
            // Everything after the last data message is the trailer.
            trailer.extend_from_slice(blob);
            if trailer.len() > TRAILER {
                return Err(corrupt(
                    endpoint,
                    format!(
                        "{} bytes followed the file, expected a {TRAILER}-byte SHA-256",
                        trailer.len()
                    ),
                ));
            }
        } else {
            received += blob.len() as u64;
            let total = *expected.get_or_insert(received + msg.remaining_bytes());
            if received + msg.remaining_bytes() != total {
                return Err(corrupt(
                    endpoint,
                    format!(
                        "etcd announced {total} bytes, then {} at byte {received}",
                        received + msg.remaining_bytes()
                    ),
                ));
            }
            hasher.update(blob);
            scanner.feed(blob);
            db_done = msg.remaining_bytes() == 0;
        }
        // Data and trailer alike go to the repository, in order.
        let mut rest = blob;
        while !rest.is_empty() {
            let take = (SNAPSHOT_CHUNK - buf.len()).min(rest.len());
            buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if buf.len() == SNAPSHOT_CHUNK {
                send(
                    sink,
                    &mut chunks,
                    std::mem::replace(&mut buf, new_buffer(sink)),
                )?;
            }
        }
        progress(blob.len() as u64);
    }
    if !db_done {
        return Err(broke(
            received,
            format!(
                "the stream ended {} bytes short of the file",
                expected.unwrap_or(0).saturating_sub(received)
            ),
        ));
    }
    if trailer.is_empty() {
        return Err(corrupt(
            endpoint,
            "etcd sent no SHA-256 trailer after the file (etcd before 3.3 does not; it is needed to restore)".into(),
        ));
    }
    let sum: [u8; 32] = hasher.finalize().into();
    if trailer != sum {
        return Err(corrupt(
            endpoint,
            format!(
                "its SHA-256 is {}, and the trailer etcd sent says {}",
                hex::encode(sum),
                hex::encode(&trailer)
            ),
        ));
    }
    if !buf.is_empty() {
        send(sink, &mut chunks, buf)?;
    }
    let facts = scanner.finish().map_err(|why| {
        corrupt(
            endpoint,
            format!(
                "its checksum matches, yet it is not a bbolt database etcd can start on: {why}"
            ),
        )
    })?;
    Ok(Streamed {
        db_size: received,
        facts,
        chunks,
    })
}

fn new_buffer(sink: &Sink) -> Vec<u8> {
    let mut b = sink.buffer();
    b.reserve_exact(SNAPSHOT_CHUNK);
    b
}

fn send(sink: &Sink, chunks: &mut Vec<(u64, u64)>, data: Vec<u8>) -> Result<()> {
    let tag = chunks.len() as u64;
    chunks.push((tag, data.len() as u64));
    sink.send(Job { tag, data })
}

fn corrupt(endpoint: &str, what: String) -> Error {
    Error::new(
        ErrorKind::Integrity,
        format!("the snapshot from {endpoint} is damaged: {what}"),
    )
    .with_guidance(
        "the backup is marked failed and none of it is used; run it again, and if it \
         repeats, list another member first in etcd.endpoints and check this one \
         (etcdctl endpoint status, etcdctl alarm list)",
    )
}
