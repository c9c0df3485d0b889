//! Restore grants: what a node agent needs to restore one backup without
//! the age identity (see [`super::crypto::Identity`]).
//!
//! The coordinator of a set restore holds the identity; the agents that
//! write the data into the nodes' volumes hold only what writers hold.
//! For each volume it decrypts the backup's manifest and the index of each
//! of its packs (read by range: the trailer, then the index, never the
//! data) and sends the plaintexts to the agent encrypted to a key the
//! agent made for that one job. The volume data itself is fetched and
//! decrypted by the agent, on its node.

use std::collections::BTreeSet;
use std::sync::Mutex;

use uuid::Uuid;

use super::Repository;
use super::crypto::Grant;
use super::manifest::Manifest;
use crate::error::{Error, ErrorKind, Result};

/// The grant that restores backup `id` (a volume backup). Blocking.
pub fn for_backup(repo: &Repository, id: Uuid) -> Result<Grant> {
    let identity = repo.identity()?;
    let sealed = super::manifest::read_sealed(&*repo.store, id)?.bytes;
    let manifest = Manifest::open(id, &sealed, &repo.secret, identity)?;
    let mut grant = Grant::default();
    grant.add(
        &sealed,
        identity.decrypt(&format!("the manifest of backup {id}"), &sealed)?,
    );
    let packs: BTreeSet<&str> = manifest
        .packs
        .iter()
        .map(String::as_str)
        .chain(manifest.chunks.iter().map(|c| c.pack.as_str()))
        .collect();
    let grant = Mutex::new(grant);
    crate::parallel::try_for_each(
        packs,
        crate::parallel::threads().max(4),
        || (),
        |_, key| {
            let sealed = sealed_index(repo, key)?;
            let plain = identity.decrypt(&format!("the index of pack {key}"), &sealed)?;
            grant.lock().unwrap().add(&sealed, plain);
            Ok(())
        },
    )?;
    Ok(grant.into_inner().unwrap())
}

/// The age-encrypted index at the end of pack `key`: its last 12 bytes
/// are the index's length and the pack magic.
fn sealed_index(repo: &Repository, key: &str) -> Result<Vec<u8>> {
    let bad = |why: &str| Error::new(ErrorKind::Integrity, format!("pack {key}: {why}"));
    let size = repo
        .store
        .head(key)?
        .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("pack {key} does not exist")))?
        .size;
    if size < 12 {
        return Err(bad("not a drctl pack (no trailer)"));
    }
    let trailer = repo.store.get_range(key, size - 12..size)?;
    if trailer.len() != 12 || trailer[4..] != *super::pack::MAGIC {
        return Err(bad("not a drctl pack (no trailer)"));
    }
    let len = u32::from_le_bytes(trailer[..4].try_into().unwrap()) as u64;
    if len > size - 12 {
        return Err(bad("index length out of range"));
    }
    repo.store.get_range(key, size - 12 - len..size - 12)
}
