//! `backup list`, `backup describe`: what on-call reads to pick a backup.
//!
//! Both read the catalog alone (the repository's id comes from the
//! catalog's row for the configured location), so they answer with the
//! object store down; `backup list --from-bucket` reads the manifests
//! instead, for when the catalog is the thing that is down. One field name
//! per concept, whatever the kind: `bytes` is the size of what was backed
//! up, `stored_bytes` what it added to the bucket, `source` where it came
//! from, `seconds` how long it took.

use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;
use uuid::Uuid;

use super::Context;
use crate::catalog::{BackupRow, Catalog, ListFilter};
use crate::config::Loaded;
use crate::error::{Error, ErrorKind, Result};
use crate::reference::short;

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only backups of this kind.
    #[arg(long, value_parser = ["volume", "etcd", "resources", "namespaces"])]
    kind: Option<String>,
    /// Only backups of this name (the volume, etcd cluster or scope name).
    #[arg(long)]
    name: Option<String>,
    /// Only backups in this state.
    #[arg(long, value_parser = ["running", "complete", "partial", "failed", "interrupted"])]
    status: Option<String>,
    /// Only backups started within this long: `24h`, `7d`.
    #[arg(long, value_name = "DURATION", value_parser = super::backup::parse_duration)]
    since: Option<chrono::Duration>,
    /// Only the newest N backups (after the other filters).
    #[arg(long, value_name = "N")]
    latest: Option<u64>,
    /// Add a SOURCE column (the path, namespaces or etcd member).
    #[arg(long, short = 'w')]
    wide: bool,
    /// List from the manifests in the bucket, without the catalog (needs
    /// the age identity): for when PostgreSQL is down or lost.
    #[arg(long)]
    from_bucket: bool,
}

/// One backup in a listing.
#[derive(Debug, Serialize)]
pub(crate) struct Listed {
    pub id: Uuid,
    /// The last 8 hex digits: enough to name it in any other command.
    pub short_id: String,
    pub kind: String,
    pub name: String,
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub seconds: Option<f64>,
    pub bytes: Option<u64>,
    pub stored_bytes: Option<u64>,
    /// Locked and kept until then; `None`: until deleted.
    pub retain_until: Option<DateTime<Utc>>,
    pub source: Option<String>,
    pub parent_id: Option<Uuid>,
    pub error: Option<String>,
    pub repository_id: Option<Uuid>,
    pub manifest_key: Option<String>,
    /// Everything the run recorded (`null` from the bucket).
    pub stats: serde_json::Value,
    /// When a drill last restored it with every check passed, and which
    /// drill run (`drctl drill report ID`); `None` until one has.
    pub verified_at: Option<DateTime<Utc>>,
    pub verified_by: Option<Uuid>,
}

impl From<&BackupRow> for Listed {
    fn from(r: &BackupRow) -> Listed {
        let num = |k: &str| r.stats.get(k).and_then(|v| v.as_u64());
        Listed {
            id: r.id,
            short_id: short(&r.id),
            kind: r.kind.clone(),
            name: r.name.clone(),
            status: r.status.clone(),
            started_at: r.started_at,
            finished_at: r.finished_at,
            seconds: r
                .stats
                .get("seconds")
                .and_then(|v| v.as_f64())
                .or_else(|| r.finished_at.map(|f| (f - r.started_at).as_seconds_f64())),
            bytes: num("bytes"),
            stored_bytes: num("stored_bytes"),
            retain_until: r.retain_until,
            source: r
                .stats
                .get("source")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            parent_id: r.parent_id,
            error: r.error.clone(),
            repository_id: Some(r.repository_id),
            manifest_key: r.manifest_key.clone(),
            stats: r.stats.clone(),
            verified_at: r.verified_at,
            verified_by: r.verified_by,
        }
    }
}

impl ListArgs {
    pub(crate) async fn run(self, ctx: &Context, loaded: &Loaded) -> Result<Vec<Listed>> {
        if self.from_bucket {
            return from_bucket(ctx, loaded, &self);
        }
        let catalog = ctx.catalog(loaded).await?;
        // No row for the repository yet: nothing was recorded there.
        let location = super::store_location(&loaded.config);
        let Some(repo) = catalog.repository_at(&location).await? else {
            return Ok(Vec::new());
        };
        let filter = ListFilter {
            kind: self.kind,
            name: self.name,
            status: self.status,
            since: self.since.map(|d| Utc::now() - d),
            latest: self.latest,
        };
        let rows = catalog.list_backups(repo, &filter).await?;
        Ok(rows.iter().map(Listed::from).collect())
    }

    pub(crate) fn wide(&self) -> bool {
        self.wide
    }
}

/// The repository id the catalog records for the configured location:
/// catalog-only commands need no object store.
pub(crate) async fn repository_id(catalog: &Catalog, loaded: &Loaded) -> Result<Uuid> {
    let location = super::store_location(&loaded.config);
    catalog.repository_at(&location).await?.ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            format!("the catalog knows no repository at {location}"),
        )
        .with_guidance(
            "no backup was recorded there yet, or the catalog is not this repository's: \
             check `repository:` and `catalog:`; `drctl catalog rebuild` fills a new catalog \
             from the bucket",
        )
    })
}

/// The listing from the manifests alone.
fn from_bucket(ctx: &Context, loaded: &Loaded, args: &ListArgs) -> Result<Vec<Listed>> {
    super::blocking(|| {
        let repo = super::open_repo(&loaded.config, ctx.identity.as_deref(), false)?;
        let since = args.since.map(|d| Utc::now() - d);
        let mut out = Vec::new();
        for id in crate::verify::manifest_ids(&repo)? {
            let sealed = crate::repo::manifest::read_sealed(&*repo.store, id)?.bytes;
            let m =
                crate::repo::manifest::Manifest::open(id, &sealed, &repo.secret, repo.identity()?)?;
            let keep = args.kind.as_ref().is_none_or(|k| *k == m.kind)
                && args.name.as_ref().is_none_or(|n| *n == m.name)
                && args.status.as_ref().is_none_or(|s| *s == m.status)
                && since.is_none_or(|s| m.created_at >= s);
            if !keep {
                continue;
            }
            out.push(Listed {
                id,
                short_id: short(&id),
                kind: m.kind.clone(),
                name: m.name.clone(),
                status: m.status.clone(),
                started_at: m.created_at,
                finished_at: None,
                seconds: None,
                bytes: (m.kind != "resources").then(|| {
                    m.totals
                        .map_or_else(|| m.entries.iter().map(|e| e.size).sum(), |t| t.bytes)
                }),
                stored_bytes: None,
                retain_until: None,
                source: Some(m.source.clone()),
                parent_id: m.parent,
                error: None,
                repository_id: Some(m.repository_id),
                manifest_key: Some(crate::repo::manifest::manifest_key(id)),
                stats: serde_json::Value::Null,
                verified_at: None,
                verified_by: None,
            });
        }
        out.sort_by_key(|l| l.started_at);
        if let Some(n) = args.latest {
            let skip = out.len().saturating_sub(n as usize);
            out.drain(..skip);
        }
        Ok(out)
    })
}

/// The table: fits 100 columns (SOURCE, with `--wide`, goes past). A
/// complete backup a drill has proved shows as `verified`.
pub(crate) fn render_list(rows: &[Listed], wide: bool) -> String {
    let mut t = format!(
        "{:<8}  {:<9}  {:<16}  {:<11}  {:<16}  {:>6}  {:>10}  {:<10}{}",
        "ID",
        "KIND",
        "NAME",
        "STATUS",
        "STARTED (UTC)",
        "TOOK",
        "SIZE",
        "KEPT UNTIL",
        if wide { "  SOURCE" } else { "" }
    )
    .trim_end()
    .to_string();
    t.push('\n');
    for r in rows {
        let line = format!(
            "{:<8}  {:<9}  {:<16}  {:<11}  {:<16}  {:>6}  {:>10}  {:<10}{}",
            r.short_id,
            r.kind,
            clip(&r.name, 16),
            if r.status == "complete" && r.verified_at.is_some() {
                "verified"
            } else {
                &r.status
            },
            r.started_at.format("%Y-%m-%d %H:%M"),
            r.seconds.map(took).unwrap_or_else(|| "-".into()),
            r.bytes
                .map(super::progress::human)
                .unwrap_or_else(|| "-".into()),
            r.retain_until
                .map(|u| u.format("%Y-%m-%d").to_string())
                .unwrap_or_else(|| "-".into()),
            if wide {
                format!("  {}", r.source.as_deref().unwrap_or("-"))
            } else {
                String::new()
            }
        );
        t.push_str(line.trim_end());
        t.push('\n');
    }
    if rows.is_empty() {
        t.push_str("(no backups)\n");
    }
    t
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut c: String = s.chars().take(n - 1).collect();
        c.push('…');
        c
    }
}

/// `4s`, `3m05s`, `2h10m`.
pub(crate) fn took(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..10 => format!("{seconds:.1}s"),
        10..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `backup describe`: the page, and what a script reads.
#[derive(Debug, Serialize)]
pub(crate) struct Described {
    #[serde(flatten)]
    pub listed: Listed,
    pub repository: String,
    /// What it holds: objects per namespace and per type (resources),
    /// files (volume), the snapshot (etcd).
    pub contents: serde_json::Value,
}

pub(crate) async fn describe(ctx: &Context, loaded: &Loaded, given: &str) -> Result<Described> {
    let catalog = ctx.catalog(loaded).await?;
    let repo = repository_id(&catalog, loaded).await?;
    let row = catalog.find_backup(repo, given).await?;
    let contents = catalog.contents(&row).await?;
    Ok(Described {
        listed: Listed::from(&row),
        repository: super::store_location(&loaded.config),
        contents,
    })
}

pub(crate) fn render_describe(d: &Described) -> String {
    let l = &d.listed;
    let mut t = format!(
        "backup     {} (short id {})\nwhat       {} backup `{}`, from {}\nstatus     {}\n",
        l.id,
        l.short_id,
        l.kind,
        l.name,
        l.source.as_deref().unwrap_or("(not recorded)"),
        l.status
    );
    if let Some(e) = &l.error {
        t.push_str(&format!("why        {e}\n"));
    }
    t.push_str(&format!(
        "started    {}\nfinished   {}{}\n",
        l.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        l.finished_at
            .map(|f| f.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_else(|| "-".into()),
        l.seconds
            .map(|s| format!(" (took {})", took(s)))
            .unwrap_or_default()
    ));
    t.push_str(&format!(
        "size       {} backed up, {} new in the bucket\n",
        l.bytes
            .map(super::progress::human)
            .unwrap_or_else(|| "-".into()),
        l.stored_bytes
            .map(super::progress::human)
            .unwrap_or_else(|| "-".into()),
    ));
    t.push_str(&format!(
        "stored in  {} ({})\nlocked     {}\n",
        d.repository,
        l.manifest_key.as_deref().unwrap_or("no manifest"),
        l.retain_until
            .map(|u| format!(
                "until {} (kept and unchangeable until then)",
                u.format("%Y-%m-%d %H:%M UTC")
            ))
            .unwrap_or_else(|| "no lock: kept until deleted".into())
    ));
    if let Some(p) = l.parent_id {
        t.push_str(&format!("parent     {p} (incremental on it)\n"));
    }
    t.push_str(&match (l.verified_at, l.verified_by) {
        (Some(at), Some(by)) => format!(
            "verified   {} by drill {by}: restored and every check passed \
             (`drctl drill report {by}`)\n",
            at.format("%Y-%m-%d %H:%M UTC")
        ),
        _ => {
            "verified   not yet: no drill has restored it (`drctl drill run --backup ID`)\n".into()
        }
    });
    t.push_str("contains   ");
    t.push_str(&render_contents(&l.kind, &d.contents, &l.stats));
    t
}

fn render_contents(kind: &str, c: &serde_json::Value, stats: &serde_json::Value) -> String {
    let n = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    match kind {
        "namespaces" => {
            let none = Vec::new();
            let members = c.get("members").and_then(|m| m.as_array()).unwrap_or(&none);
            let mut t = format!("{} member backup(s)\n", members.len());
            for m in members {
                let s = |k: &str| m.get(k).and_then(|v| v.as_str()).unwrap_or("");
                t.push_str(&format!(
                    "             {:<9} {}  {:<30} {}{}\n",
                    s("kind"),
                    s("backup_id"),
                    s("name"),
                    s("status"),
                    m.get("node")
                        .and_then(|v| v.as_str())
                        .map(|n| format!(" on {n}"))
                        .unwrap_or_default()
                ));
            }
            for p in c
                .get("problems")
                .and_then(|p| p.as_array())
                .unwrap_or(&none)
            {
                t.push_str(&format!(
                    "             NOT BACKED UP {}: {}\n",
                    p.get("claim").and_then(|v| v.as_str()).unwrap_or("?"),
                    p.get("reason").and_then(|v| v.as_str()).unwrap_or("?")
                ));
            }
            t
        }
        "resources" => {
            let mut t = format!("{} objects\n", n(c, "objects"));
            if let Some(ns) = c.get("namespaces").and_then(|v| v.as_object()) {
                for (name, count) in ns {
                    let label = if name.is_empty() {
                        "(cluster-scoped)"
                    } else {
                        name
                    };
                    t.push_str(&format!("             {label}: {count} objects\n"));
                }
            }
            if let Some(types) = c.get("types").and_then(|v| v.as_object()) {
                let list: Vec<String> = types.iter().map(|(k, v)| format!("{k} {v}")).collect();
                t.push_str(&format!("             by type: {}\n", list.join(", ")));
            }
            t
        }
        "etcd" => format!(
            "an etcd snapshot at revision {}, {} keys, HashKV {}\n",
            stats
                .get("revision")
                .map(|v| v.to_string())
                .unwrap_or_else(|| "?".into()),
            stats
                .get("key_count")
                .map(|v| v.to_string())
                .unwrap_or_else(|| "?".into()),
            stats
                .get("hash_kv")
                .and_then(|v| v.as_u64())
                .map(|h| format!("{h:08x}"))
                .unwrap_or_else(|| "?".into()),
        ),
        _ => format!(
            "{} files, {} directories, {} other entries\n",
            n(c, "files"),
            n(c, "directories"),
            n(c, "other")
        ),
    }
}
