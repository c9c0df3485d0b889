//! `backup ls` and `backup diff`: a volume backup's listing, read from its
//! trees. Only the directories asked about are read: listing one directory
//! of a backup of millions of files reads the trees on its path, and a diff
//! skips every directory whose tree is the same object in both backups.

use clap::Args;
use serde::Serialize;

use super::restore::{open_manifest, resolve_backup, with_locate};
use super::{Context, Out};
use crate::config::Loaded;
use crate::error::{Error, Result};
use crate::repo::manifest::{EntryKind, Manifest};
use crate::repo::tree::{self, Node, TreeReader};
use crate::repo::{ChunkId, Repository};

#[derive(Debug, Args)]
pub(crate) struct LsArgs {
    /// Backup: its id, short id, NAME@latest or NAME@2026-12-01T10:00.
    backup: String,
    /// Directory (or file) in the backup, from its root.
    path: Option<String>,
    /// Everything beneath the directory, not only its entries.
    #[arg(short = 'r', long)]
    recursive: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DiffArgs {
    /// The older backup.
    older: String,
    /// The newer backup.
    newer: String,
}

/// One line of `backup ls`.
#[derive(Debug, Serialize)]
pub(crate) struct Listed {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryKind,
    pub size: u64,
    /// Octal, as `chmod` takes it.
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    pub mtime: chrono::DateTime<chrono::Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl Listed {
    fn new(path: String, n: &Node) -> Listed {
        Listed {
            path,
            kind: n.kind,
            size: n.size,
            mode: format!("{:04o}", n.mode),
            uid: n.uid,
            gid: n.gid,
            mtime: chrono::DateTime::from_timestamp_nanos(n.mtime_ns),
            target: n.target.clone(),
        }
    }
}

fn top_of(m: &Manifest) -> Result<ChunkId> {
    if m.kind != "volume" {
        return Err(Error::config(format!(
            "backup {} is a {} backup; only volume backups have files to list",
            m.backup_id, m.kind
        ))
        .with_guidance("`drctl backup describe` shows what it holds"));
    }
    m.tree.ok_or_else(|| {
        Error::config(format!(
            "backup {} was made before drctl kept listings in trees",
            m.backup_id
        ))
        .with_guidance("restore it whole into a scratch directory to see its files")
    })
}

fn read_tree<T>(
    ctx: &Context,
    loaded: &Loaded,
    repo: &Repository,
    packs: Vec<String>,
    f: impl FnOnce(&TreeReader<'_>) -> Result<T>,
) -> Result<T> {
    with_locate(ctx, loaded, repo, packs, |locate| {
        // Only the directories on a path, or those that changed, are read.
        let reader = TreeReader::new(&*repo.store, &repo.secret, locate, repo.max_pack_bytes())
            .prefetch(false);
        f(&reader)
    })
}

pub(crate) fn ls(ctx: &Context, loaded: &Loaded, args: LsArgs, out: &Out) -> Result<()> {
    super::blocking(|| {
        let repo = super::open_repo(&loaded.config, ctx.identity.as_deref(), false)?;
        let id = resolve_backup(ctx, loaded, &repo, &args.backup)?;
        let m = open_manifest(&repo, id)?;
        let top = top_of(&m)?;
        let path = args.path.clone().unwrap_or_default();
        let path = path.trim_matches('/');
        let nodes = read_tree(ctx, loaded, &repo, m.packs.clone(), |reader| {
            tree::list(reader, &top, path, args.recursive)
        })?;
        let rows: Vec<Listed> = nodes
            .iter()
            .map(|(p, n)| Listed::new(p.clone(), n))
            .collect();
        out.emit(&rows, || render_ls(&rows));
        Ok(())
    })
}

fn render_ls(rows: &[Listed]) -> String {
    let mut t = String::new();
    for r in rows {
        let kind = match r.kind {
            EntryKind::Dir => 'd',
            EntryKind::Symlink => 'l',
            EntryKind::Hardlink => 'h',
            EntryKind::Block => 'b',
            EntryKind::File => '-',
        };
        let name = match (&r.target, r.kind) {
            (Some(t), EntryKind::Symlink) => format!("{} -> {t}", r.path),
            (Some(t), EntryKind::Hardlink) => format!("{} => {t}", r.path),
            _ => r.path.clone(),
        };
        t.push_str(&format!(
            "{kind}{} {:>5}:{:<5} {:>10} {} {name}\n",
            r.mode,
            r.uid,
            r.gid,
            super::progress::human(r.size),
            r.mtime.format("%Y-%m-%d %H:%M"),
        ));
    }
    t
}

/// What `backup diff` prints as JSON.
#[derive(Debug, Serialize)]
pub(crate) struct Diffed {
    pub older: uuid::Uuid,
    pub newer: uuid::Uuid,
    pub added: usize,
    pub removed: usize,
    pub modified: usize,
    pub metadata: usize,
    pub changes: Vec<tree::Difference>,
}

pub(crate) fn diff(ctx: &Context, loaded: &Loaded, args: DiffArgs, out: &Out) -> Result<()> {
    super::blocking(|| {
        let repo = super::open_repo(&loaded.config, ctx.identity.as_deref(), false)?;
        let a = resolve_backup(ctx, loaded, &repo, &args.older)?;
        let b = resolve_backup(ctx, loaded, &repo, &args.newer)?;
        let (ma, mb) = (open_manifest(&repo, a)?, open_manifest(&repo, b)?);
        let (ta, tb) = (top_of(&ma)?, top_of(&mb)?);
        let mut packs = ma.packs.clone();
        packs.extend(mb.packs.iter().cloned());
        packs.sort();
        packs.dedup();
        let changes = read_tree(ctx, loaded, &repo, packs, |reader| {
            tree::diff(reader, &ta, &tb)
        })?;
        let count = |c: tree::Change| changes.iter().filter(|d| d.change == c).count();
        let d = Diffed {
            older: a,
            newer: b,
            added: count(tree::Change::Added),
            removed: count(tree::Change::Removed),
            modified: count(tree::Change::Modified),
            metadata: count(tree::Change::Metadata),
            changes,
        };
        out.emit(&d, || render_diff(&d));
        Ok(())
    })
}

fn render_diff(d: &Diffed) -> String {
    let mut t = String::new();
    for c in &d.changes {
        let (mark, size) = match c.change {
            tree::Change::Added => ('+', c.new_size.map(super::progress::human)),
            tree::Change::Removed => ('-', c.old_size.map(super::progress::human)),
            tree::Change::Modified => (
                'M',
                c.old_size.zip(c.new_size).map(|(o, n)| {
                    format!(
                        "{} -> {}",
                        super::progress::human(o),
                        super::progress::human(n)
                    )
                }),
            ),
            tree::Change::Metadata => ('m', None),
        };
        let slash = if c.kind == EntryKind::Dir { "/" } else { "" };
        match size.filter(|_| c.kind != EntryKind::Dir) {
            Some(s) => t.push_str(&format!("{mark} {}{slash}  ({s})\n", c.path)),
            None => t.push_str(&format!("{mark} {}{slash}\n", c.path)),
        }
    }
    t.push_str(&format!(
        "{} added, {} removed, {} modified, {} with new metadata (+ added, - removed, M data, m metadata only; a directory added or removed is one line)\n",
        d.added, d.removed, d.modified, d.metadata
    ));
    t
}
