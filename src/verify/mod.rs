//! `drctl verify`: is what the repository holds what the backups need?
//!
//! Structural check (cheap, always): every manifest decrypts and
//! authenticates, and every pack it references exists. With `--read-data`
//! (all packs, or a random share of them): each pack is downloaded, its
//! SHA-256 checked against its key, and every chunk in it decrypted,
//! decompressed and checked against its id. A damaged pack is reported with
//! the backups and files that need it.

pub mod storage;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use uuid::Uuid;

use crate::error::Result;
use crate::repo::Repository;
use crate::repo::manifest::{ChunkLocation, Manifest};
use crate::repo::pack::OpenPack;
use crate::restore::volume::display_path;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub backups: u64,
    pub packs: u64,
    pub packs_read: u64,
    pub bytes_read: u64,
    pub chunks_checked: u64,
    pub damaged_manifests: Vec<DamagedManifest>,
    pub damaged_packs: Vec<DamagedPack>,
}

#[derive(Debug, Serialize)]
pub struct DamagedManifest {
    pub backup: Uuid,
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct DamagedPack {
    pub pack: String,
    pub error: String,
    /// Affected backups, and in each the files that need this pack.
    pub affected: BTreeMap<Uuid, Vec<String>>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.damaged_manifests.is_empty() && self.damaged_packs.is_empty()
    }
}

/// All backup ids with a manifest in the repository.
pub fn manifest_ids(repo: &Repository) -> Result<Vec<Uuid>> {
    Ok(repo
        .store
        .list("manifests/")?
        .iter()
        .filter_map(|m| m.key.strip_prefix("manifests/")?.parse().ok())
        .collect())
}

/// Verifies `backups` (all when empty). `read_share`: `None` structural
/// only, `Some(1.0)` every pack, `Some(0.1)` a random tenth.
///
/// A volume backup's trees are all read (each checked against its id) and
/// located through `locate` (the catalog) when given, else through the
/// indexes of the backup's packs.
pub fn verify(
    repo: &Repository,
    backups: &[Uuid],
    read_share: Option<f64>,
    locate: Option<&dyn crate::repo::tree::Locate>,
) -> Result<Report> {
    let identity = repo.identity()?;
    let ids = if backups.is_empty() {
        manifest_ids(repo)?
    } else {
        backups.to_vec()
    };
    let mut report = Report::default();
    // pack → backup → files
    let mut users: BTreeMap<String, BTreeMap<Uuid, BTreeSet<String>>> = BTreeMap::new();
    // pack → where the manifests say their chunks are in it: each is read
    // from there, so a manifest that points at the wrong place is found,
    // not only a pack that disagrees with its own index.
    let mut wanted: HashMap<String, BTreeMap<Place, ChunkLocation>> = HashMap::new();
    for id in ids {
        report.backups += 1;
        let manifest = crate::repo::manifest::read_sealed(&*repo.store, id)
            .and_then(|r| Manifest::open(id, &r.bytes, &repo.secret, identity))
            .and_then(|mut m| {
                crate::repo::object_table::expand(repo, &mut m)?;
                if m.tree.is_some() {
                    let by_index = crate::repo::tree::IndexLocate::new(repo, m.packs.clone());
                    let locate = crate::repo::tree::Fallback {
                        first: locate,
                        then: &by_index,
                    };
                    crate::repo::tree::fill(repo, &mut m, &locate, &crate::repo::tree::All)?;
                }
                Ok(m)
            });
        let manifest = match manifest {
            Ok(m) => m,
            Err(e) => {
                report.damaged_manifests.push(DamagedManifest {
                    backup: id,
                    error: e.report().trim_end().to_string(),
                });
                continue;
            }
        };
        for loc in &manifest.chunks {
            wanted.entry(loc.pack.clone()).or_default().insert(
                (loc.offset, loc.id.0, loc.length, loc.raw_length),
                loc.clone(),
            );
        }
        // Every pack a volume backup lists, its tree packs included.
        for pack in &manifest.packs {
            users
                .entry(pack.clone())
                .or_default()
                .entry(id)
                .or_default();
        }
        // A resources backup's packs: those of its object table (already
        // read whole above) and those of its objects, named by object.
        for loc in &manifest.chunks {
            if !manifest.objects.is_empty() {
                users
                    .entry(loc.pack.clone())
                    .or_default()
                    .entry(id)
                    .or_default();
            }
        }
        for o in &manifest.objects {
            if let Some(loc) = manifest.chunks.get(o.chunk as usize) {
                let name = match &o.namespace {
                    Some(ns) => format!("{} {ns}/{}", o.kind, o.name),
                    None => format!("{} {}", o.kind, o.name),
                };
                users
                    .entry(loc.pack.clone())
                    .or_default()
                    .entry(id)
                    .or_default()
                    .insert(name);
            }
        }
        for e in &manifest.entries {
            for x in &e.extents {
                for &c in &x.chunks {
                    if let Some(loc) = manifest.chunks.get(c as usize) {
                        users
                            .entry(loc.pack.clone())
                            .or_default()
                            .entry(id)
                            .or_default()
                            .insert(display_path(e));
                    }
                }
            }
        }
    }
    report.packs = users.len() as u64;
    let chosen = choose(users.keys().cloned().collect(), read_share);
    // Packs are checked on every core; each is read whole and dropped.
    let results = std::sync::Mutex::new(Vec::new());
    crate::parallel::try_for_each(
        &users,
        crate::parallel::threads(),
        || (),
        |_, (pack, who)| {
            let read = chosen.contains(pack);
            let outcome = if read {
                read_pack(repo, identity, pack, wanted.get(pack))
            } else {
                // Its original, which a delete marker does not hide.
                match crate::store::original(&*repo.store, pack) {
                    Ok(Some(_)) => Ok((0, 0)),
                    Ok(None) => Err(format!("pack {pack} is missing")),
                    Err(e) => Err(e.report().trim_end().to_string()),
                }
            };
            results.lock().unwrap().push((pack, who, read, outcome));
            Ok(())
        },
    )?;
    let mut results = results.into_inner().unwrap();
    results.sort_by(|a, b| a.0.cmp(b.0));
    for (pack, who, read, outcome) in results {
        if read {
            report.packs_read += 1;
        }
        match outcome {
            Ok((bytes, chunks)) => {
                report.bytes_read += bytes;
                report.chunks_checked += chunks;
            }
            Err(error) => report.damaged_packs.push(DamagedPack {
                pack: pack.clone(),
                error,
                affected: who
                    .iter()
                    .map(|(b, files)| (*b, files.iter().cloned().collect()))
                    .collect(),
            }),
        }
    }
    Ok(report)
}

/// Reads and checks one pack; returns bytes read and chunks checked.
/// Where a manifest places a chunk: offset, id, stored and raw length.
type Place = (u32, [u8; 32], u32, u32);

/// Every chunk a manifest places in it is read from there (the pack's
/// index must agree); the chunks no manifest names are checked against the
/// index alone.
fn read_pack(
    repo: &Repository,
    identity: &crate::repo::Identity,
    pack: &str,
    wanted: Option<&BTreeMap<Place, ChunkLocation>>,
) -> std::result::Result<(u64, u64), String> {
    let msg = |e: crate::Error| e.report().trim_end().to_string();
    let pack = OpenPack::fetch(&*repo.store, pack, identity, repo.max_pack_bytes()).map_err(msg)?;
    let mut zstd = crate::repo::pack::decompressor();
    let mut checked = 0u64;
    for loc in wanted.into_iter().flat_map(|w| w.values()) {
        pack.chunk_at(loc, &repo.secret, &mut zstd).map_err(msg)?;
        checked += 1;
    }
    for entry in &pack.index.chunks {
        let place = (entry.offset, entry.id.0, entry.length, entry.raw_length);
        if wanted.is_some_and(|w| w.contains_key(&place)) {
            continue;
        }
        pack.chunk(entry, &repo.secret, &mut zstd).map_err(msg)?;
        checked += 1;
    }
    Ok((pack.size(), checked))
}

/// The packs to read: all, or a random share (at least one).
fn choose(mut packs: Vec<String>, share: Option<f64>) -> BTreeSet<String> {
    let Some(share) = share else {
        return BTreeSet::new();
    };
    if share >= 1.0 {
        return packs.into_iter().collect();
    }
    let n = ((packs.len() as f64 * share).ceil() as usize).clamp(1.min(packs.len()), packs.len());
    // Fisher-Yates with OS randomness: a different sample each run covers
    // the whole repository over time.
    for i in (1..packs.len()).rev() {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        let j = (u64::from_le_bytes(b) % (i as u64 + 1)) as usize;
        packs.swap(i, j);
    }
    packs.into_iter().take(n).collect()
}
