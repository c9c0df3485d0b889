//! The agent's half of a set restore: writing one claim's data into the
//! volume a helper pod mounts on this node.
//!
//! The agent never holds the age identity. For each job it makes a key of
//! its own, offers the public half through the job's row, and the
//! restore's coordinator answers with a grant encrypted to it: the
//! plaintexts of that backup's manifest and pack indexes, nothing more
//! ([`crate::repo::grant`]). The data is fetched from the store, checked
//! and decrypted here; it never passes through the coordinator.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use super::{Agent, find_mount, job_params};
use crate::catalog::Claim;
use crate::error::{Error, ErrorKind, Result};
use crate::repo::crypto::{Grant, Identity};
use crate::restore::volume::{Options, Target};

/// What a restore job asks (the `params` of its row).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RestoreJob {
    /// The restore this job is part of.
    pub restore_id: Uuid,
    /// The volume backup whose data is written.
    pub backup_id: Uuid,
    /// The claim it is written into (its namespace after any mapping).
    pub namespace: String,
    pub claim: String,
    /// The helper pod that mounts the claim on this node, and its uid.
    pub pod: String,
    pub pod_uid: String,
}

/// How long the agent waits for the coordinator's grant.
const GRANT_WAIT: Duration = Duration::from_secs(120);

pub(super) async fn run(
    agent: &Agent,
    claim: &Claim,
    params: &Value,
) -> Result<(Uuid, String, Value)> {
    let job: RestoreJob = job_params(params)?;
    let (path, block, _, _) =
        find_mount(agent, &job.namespace, &job.claim, &job.pod, &job.pod_uid).await?;
    let key = Identity::ephemeral();
    let recipient = key.recipients().remove(0);
    agent.catalog.offer_key(claim, &recipient).await?;
    let deadline = Instant::now() + GRANT_WAIT;
    let sealed = loop {
        if let Some(g) = agent.catalog.key_grant(claim).await? {
            break g;
        }
        if Instant::now() > deadline {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "the restore's coordinator sent no grant for backup {} within {} s",
                    job.backup_id,
                    GRANT_WAIT.as_secs()
                ),
            )
            .with_guidance("is `drctl restore namespaces` still running? run it again"));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    };
    let grant = Grant::open(&sealed, &key)?;
    drop(key);
    let repo = Arc::new(agent.repo.with_identity(Identity::granted(grant)));
    let catalog = agent.catalog.clone();
    let id = job.backup_id;
    let where_ = format!(
        "claim {}/{} on node {}",
        job.namespace, job.claim, agent.node
    );
    tracing::info!(backup = %id, claim = %format!("{}/{}", job.namespace, job.claim),
        path = %path.display(), "volume restore started");
    let handle = tokio::runtime::Handle::current();
    let summary = tokio::task::spawn_blocking(move || {
        let mut manifest = crate::restore::open_manifest(&repo, id)?;
        if manifest.kind != "volume" {
            return Err(Error::new(
                ErrorKind::Integrity,
                format!("backup {id} is a {} backup, not a volume", manifest.kind),
            ));
        }
        if manifest.tree.is_some() {
            let packs = manifest.packs.clone();
            crate::backup::with_locate(&handle, Some(&catalog), &repo, packs, |locate| {
                crate::repo::tree::fill(&repo, &mut manifest, locate, &crate::repo::tree::All)
            })?;
        }
        let is_block = manifest
            .entries
            .iter()
            .any(|e| e.kind == crate::repo::manifest::EntryKind::Block);
        if is_block != block {
            return Err(Error::config(format!(
                "backup {id} holds a {} volume, and {where_} is a {} volume",
                if is_block { "raw block" } else { "filesystem" },
                if block { "raw block" } else { "filesystem" },
            ))
            .with_guidance("the restored claim's volumeMode must be the backed-up one"));
        }
        let bytes: u64 = manifest
            .entries
            .iter()
            .map(|e| e.extents.iter().map(|x| x.length).sum::<u64>())
            .sum();
        check_room(&path, block, bytes, &where_)?;
        // The volume is new (the restore made its claim): a filesystem's
        // own `lost+found` is all it may hold.
        let target = if block {
            Target::Block { path, force: true }
        } else {
            Target::Dir { path, force: true }
        };
        crate::restore::volume::restore(&repo, &manifest, &target, Options::default(), &|_| {})
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Failed, format!("the restore task died: {e}")))??;
    tracing::info!(backup = %id, bytes = summary.bytes, "volume restore done");
    let result = serde_json::to_value(&summary).expect("summaries serialise");
    Ok((id, "complete".into(), result))
}

/// Refuses a volume smaller than the data: the restore would fail when
/// the disk fills, with part of the data written.
fn check_room(path: &Path, block: bool, bytes: u64, where_: &str) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::FileTypeExt;
    let room = if block {
        let meta = std::fs::metadata(path).map_err(|e| {
            Error::io(
                e,
                ErrorKind::Failed,
                format!("cannot stat {}", path.display()),
            )
        })?;
        if meta.file_type().is_block_device() {
            let mut f = std::fs::File::open(path).map_err(|e| {
                Error::io(
                    e,
                    ErrorKind::Failed,
                    format!("cannot open {}", path.display()),
                )
            })?;
            f.seek(SeekFrom::End(0)).ok()
        } else {
            let dir = path.parent().unwrap_or(path);
            rustix::fs::statvfs(dir)
                .ok()
                .map(|s| s.f_bavail * s.f_frsize + meta.len())
        }
    } else {
        rustix::fs::statvfs(path)
            .ok()
            .map(|s| s.f_bavail * s.f_frsize)
    };
    match room {
        Some(room) if room < bytes => Err(Error::new(
            ErrorKind::Config,
            format!(
                "the data of {where_} is {}, and its volume has {} free",
                crate::cli::progress::human(bytes),
                crate::cli::progress::human(room)
            ),
        )
        .with_guidance(
            "nothing was written; restore with a larger claim (edit the claim's storage \
             request in the backup's resources, or resize the volume) and run the restore again",
        )),
        _ => Ok(()),
    }
}
