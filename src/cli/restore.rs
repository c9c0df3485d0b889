use std::path::PathBuf;

use clap::{Args, Subcommand};
use uuid::Uuid;

use super::{Context, Out};
use crate::error::{Error, ErrorKind, Result};
use crate::repo::Repository;
use crate::repo::manifest::{Manifest, manifest_key};
use crate::restore::volume::{Target, restore};

#[derive(Debug, Subcommand)]
pub(crate) enum RestoreCommand {
    /// Restore a volume backup into a directory (or a block image to a file).
    /// Needs the age identity; does not need the catalog.
    Volume(VolumeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct VolumeArgs {
    /// Backup id (or a unique prefix).
    backup: String,
    /// Directory to restore into; must be empty or absent unless --force.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "block",
        conflicts_with = "block"
    )]
    to: Option<PathBuf>,
    /// File or device to write a block backup to.
    #[arg(long, value_name = "FILE")]
    block: Option<PathBuf>,
    /// Restore into a non-empty directory (or over an existing block target).
    #[arg(long)]
    force: bool,
}

impl RestoreCommand {
    pub(crate) fn run(self, ctx: &Context, out: &Out) -> Result<()> {
        let loaded = ctx.load_config()?;
        match self {
            RestoreCommand::Volume(args) => {
                let target = match (args.to, args.block) {
                    (Some(p), _) => Target::Dir {
                        path: p,
                        force: args.force,
                    },
                    (None, Some(b)) => Target::Block {
                        path: b,
                        force: args.force,
                    },
                    (None, None) => unreachable!("clap requires one"),
                };
                // Refuse a bad target before touching the repository.
                crate::restore::volume::check_target(&target)?;
                let repo = super::open_repo(&loaded.config, ctx.identity.as_deref(), false)?;
                let id = resolve_backup(&repo, &args.backup)?;
                let manifest = load_manifest(&repo, id)?;
                let wants_block = matches!(target, Target::Block { .. });
                let is_block = manifest
                    .entries
                    .iter()
                    .any(|e| e.kind == crate::repo::manifest::EntryKind::Block);
                if wants_block != is_block {
                    return Err(Error::config(format!(
                        "backup {id} is a {} backup; restore it with {}",
                        if is_block { "block" } else { "directory" },
                        if is_block { "--block FILE" } else { "--to DIR" }
                    )));
                }
                let total = manifest
                    .entries
                    .iter()
                    .map(|e| e.extents.iter().map(|x| x.length).sum::<u64>())
                    .sum();
                let bar = super::progress::bytes(Some(total), "restored");
                let result = restore(&repo, &manifest, &target, &|n| bar.inc(n));
                bar.finish_and_clear();
                let summary = result.map_err(|e| {
                    let hint = format!(
                        "nothing was marked done: the target may hold a partial restore; \
                         fix the cause and run the restore again with --force{}",
                        e.guidance().map(|g| format!(" ({g})")).unwrap_or_default()
                    );
                    let kind = e.kind();
                    Error::new(kind, format!("restore of backup {id} failed: {}", e.what()))
                        .with_source(e)
                        .with_guidance(hint)
                })?;
                out.emit(&summary, || {
                    let mut t = format!(
                        "restored backup {} to {}\n  {} entries, {} files, {} from {} pack(s), all verified\n",
                        summary.backup_id,
                        summary.target,
                        summary.entries,
                        summary.files,
                        super::progress::human(summary.bytes),
                        summary.packs_read
                    );
                    for w in &summary.warnings {
                        t.push_str(&format!("  warning: {w}\n"));
                    }
                    t
                });
                Ok(())
            }
        }
    }
}

/// A backup id from a full id or a unique prefix, found in the bucket's
/// manifests so that restore works with the catalog gone.
pub(crate) fn resolve_backup(repo: &Repository, given: &str) -> Result<Uuid> {
    if let Ok(id) = given.parse::<Uuid>() {
        return Ok(id);
    }
    let given_l = given.to_ascii_lowercase();
    let matches: Vec<Uuid> = crate::verify::manifest_ids(repo)?
        .into_iter()
        .filter(|id| id.to_string().starts_with(&given_l))
        .collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(Error::new(
            ErrorKind::NotFound,
            format!("no backup `{given}` in {}", repo.store.location()),
        )
        .with_guidance("`drctl backup list` shows the backups")),
        _ => Err(Error::config(format!("backup id `{given}` is ambiguous"))
            .with_guidance("give more characters of the id")),
    }
}

pub(crate) fn load_manifest(repo: &Repository, id: Uuid) -> Result<Manifest> {
    let sealed = repo.store.get(&manifest_key(id)).map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            Error::new(
                ErrorKind::NotFound,
                format!("backup {id} has no manifest in {}", repo.store.location()),
            )
            .with_guidance("it may have failed or still be running: `drctl backup describe ID`")
        } else {
            e
        }
    })?;
    Manifest::open(id, &sealed, &repo.secret, repo.identity()?)
}
