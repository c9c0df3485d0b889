//! The object table of a resources backup: every object and where its chunk
//! is, stored through the pipeline as chunks of its own.
//!
//! Listed in the manifest, the table would cost about 60 bytes per object
//! in every backup, most of it the chunk ids, which do not compress. A
//! backup of an unchanged cluster would then upload more than 1% of a full
//! one for the manifest alone. Stored as content-defined chunks, an
//! unchanged table is chunks the repository already has, and a changed one
//! stores only the chunks around the change. The manifest names the table's
//! chunks (`object_table`); [`expand`] reads them back, verified like any
//! chunk, so everything after it sees `objects` and `chunks` as if the
//! manifest listed them itself.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::Repository;
use super::manifest::{ChunkLocation, KubeObject, Manifest};
use super::pack::OpenPack;
use crate::error::{Error, ErrorKind, Result};

/// What the table's chunks hold, as JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct ObjectTable {
    /// As [`Manifest::objects`]; `chunk` indexes `chunks` below.
    pub objects: Vec<KubeObject>,
    pub chunks: Vec<ChunkLocation>,
}

/// Reads a manifest's object table (if it has one) and merges it in: the
/// table's objects become `objects`, their chunks are appended to `chunks`.
/// Blocking.
pub fn expand(repo: &Repository, m: &mut Manifest) -> Result<()> {
    let Some(table) = m.object_table.take() else {
        return Ok(());
    };
    let damaged = |what: String| {
        Error::new(
            ErrorKind::Integrity,
            format!("the object table of backup {}: {what}", m.backup_id),
        )
        .with_guidance("run `drctl verify` to see what is damaged")
    };
    let identity = repo.identity()?;
    let mut packs: HashMap<&str, OpenPack> = HashMap::new();
    let mut zstd = super::pack::decompressor();
    let mut bytes = Vec::new();
    for &i in &table {
        let loc = m
            .chunks
            .get(i as usize)
            .ok_or_else(|| damaged(format!("chunk {i} is not in the manifest")))?;
        if !packs.contains_key(loc.pack.as_str()) {
            let pack = OpenPack::fetch(&*repo.store, &loc.pack, identity, repo.max_pack_bytes())?;
            packs.insert(loc.pack.as_str(), pack);
        }
        bytes.extend(packs[loc.pack.as_str()].chunk_at(loc, &repo.secret, &mut zstd)?);
    }
    let t: ObjectTable =
        serde_json::from_slice(&bytes).map_err(|e| damaged(format!("not a table: {e}")))?;
    let base = m.chunks.len() as u32;
    m.objects = t
        .objects
        .into_iter()
        .map(|mut o| {
            o.chunk += base;
            o
        })
        .collect();
    m.chunks.extend(t.chunks);
    Ok(())
}
