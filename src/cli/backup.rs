use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};

use super::{Context, Out};
use crate::backup::Summary;
use crate::error::{Error, ErrorKind, Result};
use crate::source::volume::Source;

#[derive(Debug, Subcommand)]
pub(crate) enum BackupCommand {
    /// Back up a volume: a directory tree, or a block image with --block.
    Volume(VolumeArgs),
    /// Back up etcd: a snapshot of a healthy member (from `etcd:` in the
    /// config), with its revision, key count and HashKV recorded.
    Etcd(EtcdArgs),
    /// Back up API resources: the objects of the chosen namespaces and
    /// types, with the cluster-scoped objects they use, each object's JSON
    /// stored once across backups.
    Resources(ResourcesArgs),
    /// Back up namespaces with their data, as one set: the resources, and
    /// every PersistentVolumeClaim they use, each read by the `drctl agent`
    /// of the node that mounts it. A claim that cannot be read makes the
    /// set partial (exit 8), with the claim named.
    Namespaces(NamespacesArgs),
    /// List the backups in the catalog (or, with --from-bucket, in the
    /// bucket's manifests).
    List(super::listing::ListArgs),
    /// Show one backup: what, when, how long, how big, where it lies, until
    /// when it is locked, what it contains.
    Describe {
        /// Backup: its id, short id (last 8 hex digits), first or last
        /// digits, or NAME@latest.
        backup: String,
    },
    /// List the files of a volume backup: a directory's entries (the
    /// root's by default), or everything beneath it with -r.
    Ls(super::browse::LsArgs),
    /// What changed between two volume backups: files added, removed,
    /// modified, or with new metadata. Reads only the directories that
    /// changed.
    Diff(super::browse::DiffArgs),
    /// Delete a backup from the catalog. Its objects stay, locked, until
    /// `drctl gc` finds nothing else needs them and their locks expired.
    Delete {
        /// Backup: its id, short id (last 8 hex digits), first or last
        /// digits, or NAME@latest.
        backup: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct VolumeArgs {
    /// Directory to back up.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "block",
        conflicts_with = "block"
    )]
    path: Option<PathBuf>,
    /// Block image or device to back up (fixed-size chunks).
    #[arg(long, value_name = "FILE")]
    block: Option<PathBuf>,
    /// Name of the volume; incrementals are against the last backup of the
    /// same name. Default: the last component of the path.
    #[arg(long)]
    name: Option<String>,
    /// How long to keep this backup, and so how long its objects stay
    /// locked: `90d`, `12h`, `30m`, `45s`. Default: repository.s3.retention_days
    /// (a local repository has no locks and keeps backups until deleted).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    retention: Option<chrono::Duration>,
}

#[derive(Debug, Args)]
pub(crate) struct EtcdArgs {
    /// Name of the etcd cluster in the catalog.
    #[arg(long, default_value = "etcd")]
    name: String,
    /// How long to keep this backup (and its object locks): `90d`, `12h`.
    /// Default: repository.s3.retention_days.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    retention: Option<chrono::Duration>,
}

#[derive(Debug, Args)]
pub(crate) struct ResourcesArgs {
    #[command(flatten)]
    scope: super::resources::ScopeArgs,
    #[command(flatten)]
    cluster: super::resources::ClusterArgs,
    /// Name of the backup in the catalog (a cluster, an application).
    #[arg(long, default_value = "resources")]
    name: String,
    /// How long to keep this backup (and its object locks): `90d`, `12h`.
    /// Default: repository.s3.retention_days.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    retention: Option<chrono::Duration>,
}

#[derive(Debug, Args)]
pub(crate) struct NamespacesArgs {
    #[command(flatten)]
    scope: super::resources::ScopeArgs,
    #[command(flatten)]
    cluster: super::resources::ClusterArgs,
    /// Name of the set (its members: NAME for the resources, NS/CLAIM for
    /// each volume).
    #[arg(long)]
    name: String,
    /// How long to keep the set (and its object locks): `90d`, `12h`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    retention: Option<chrono::Duration>,
    /// Seconds a claim's volume job may wait for the agent of its node
    /// before the claim is reported as not backed up.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    agent_timeout: u64,
    /// Seconds a helper pod (for a claim no pod mounts) may take to run.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pod_timeout: u64,
    /// The image of the helper pods: it only holds the claim mounted.
    #[arg(long, env = "DRCTL_HELPER_IMAGE", default_value = crate::agent::helper::DEFAULT_IMAGE)]
    helper_image: String,
    /// Seconds the whole set may take.
    #[arg(long, value_name = "SECONDS", default_value_t = 6 * 3600)]
    timeout: u64,
}

/// Runs a backup with a progress callback that feeds `bar`, and clears the
/// bar when it ends, whichever way.
async fn with_progress<T, F>(
    bar: indicatif::ProgressBar,
    backup: impl FnOnce(Arc<dyn Fn(u64) + Send + Sync>) -> F,
) -> Result<T>
where
    F: std::future::Future<Output = Result<T>>,
{
    let b2 = bar.clone();
    let result = backup(Arc::new(move |n| b2.inc(n))).await;
    bar.finish_and_clear();
    result
}

/// `90d`, `12h`, `30m`, `45s`: a number and one unit.
pub(crate) fn parse_duration(s: &str) -> std::result::Result<chrono::Duration, String> {
    let bad = || format!("`{s}` is not a duration; write a number and a unit: 90d, 12h, 30m, 45s");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let n: i64 = s[..split].parse().map_err(|_| bad())?;
    let d = match &s[split..] {
        "d" => chrono::Duration::try_days(n),
        "h" => chrono::Duration::try_hours(n),
        "m" => chrono::Duration::try_minutes(n),
        "s" => chrono::Duration::try_seconds(n),
        _ => None,
    };
    d.filter(|d| *d > chrono::Duration::zero()).ok_or_else(bad)
}

impl BackupCommand {
    pub(crate) async fn run(self, ctx: &Context, out: &Out) -> Result<()> {
        let loaded = ctx.load_config()?;
        // Views: the catalog alone (or the bucket alone with --from-bucket).
        match self {
            BackupCommand::List(args) => {
                let wide = args.wide();
                let rows = args.run(ctx, &loaded).await?;
                out.emit(&rows, || super::listing::render_list(&rows, wide));
                return Ok(());
            }
            BackupCommand::Describe { backup } => {
                let d = super::listing::describe(ctx, &loaded, &backup).await?;
                out.emit(&d, || super::listing::render_describe(&d));
                return Ok(());
            }
            BackupCommand::Ls(args) => return super::browse::ls(ctx, &loaded, args, out),
            BackupCommand::Diff(args) => return super::browse::diff(ctx, &loaded, args, out),
            _ => {}
        }
        let catalog = ctx.catalog(&loaded).await?;
        match self {
            BackupCommand::Volume(args) => {
                let source = match (args.path, args.block) {
                    (Some(p), _) => Source::Dir(p),
                    (None, Some(b)) => Source::Block(b),
                    (None, None) => unreachable!("clap requires one"),
                };
                let name = match args.name {
                    Some(n) => n,
                    None => source
                        .path()
                        .canonicalize()
                        .ok()
                        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                        .ok_or_else(|| {
                            Error::config(format!(
                                "cannot name the volume {}",
                                source.path().display()
                            ))
                            .with_guidance("pass --name NAME")
                        })?,
                };
                let writer = writer(&loaded.config, ctx.identity.as_deref(), args.retention)?;
                let bar = super::progress::bytes(None, "read");
                let summary = with_progress(bar, |p| {
                    crate::backup::backup_volume(writer, &catalog, &name, source, p)
                })
                .await?;
                out.emit(&summary, || render_summary(&summary));
                if summary.status == "partial" {
                    return Err(Error::new(
                        ErrorKind::Partial,
                        format!(
                            "backup {} is partial: {} path(s) could not be read",
                            summary.backup_id,
                            summary.problems.len()
                        ),
                    )
                    .with_guidance(
                        "the rest is backed up and restorable; the paths are listed above",
                    ));
                }
                Ok(())
            }
            BackupCommand::Etcd(args) => {
                let cfg = loaded.config.etcd.clone().ok_or_else(|| {
                    Error::config("the configuration has no `etcd:` section").with_guidance(
                        "add etcd.endpoints (https://HOST:2379) and etcd.ca_file, cert_file, \
                         key_file (docs/configuration.md)",
                    )
                })?;
                let writer = writer(&loaded.config, ctx.identity.as_deref(), args.retention)?;
                let bar = super::progress::bytes(None, "streamed");
                let s = with_progress(bar, |p| {
                    crate::backup::backup_etcd(writer, &catalog, &cfg, &args.name, p)
                })
                .await?;
                out.emit(&s, || render_etcd(&s));
                Ok(())
            }
            BackupCommand::Resources(args) => {
                // Bad flags and an unreachable cluster fail before the
                // repository is touched.
                let scope = args.scope.scope()?;
                let writer = writer(&loaded.config, ctx.identity.as_deref(), args.retention)?;
                let cluster = args.cluster.connect(&loaded.config).await?;
                let bar = super::progress::counter("objects");
                let s = with_progress(bar, |p| {
                    crate::backup::backup_resources(
                        writer, &catalog, &cluster, &scope, &args.name, p,
                    )
                })
                .await?;
                out.emit(&s, || super::resources::render_backup(&s));
                Ok(())
            }
            BackupCommand::Namespaces(args) => {
                let scope = args.scope.scope()?;
                if args.scope.is_unfiltered() {
                    return Err(Error::config("a namespace set needs --include-namespaces")
                        .with_guidance("name the namespaces to back up with their data"));
                }
                let cluster = args.cluster.connect(&loaded.config).await?;
                let repo = Arc::new(super::open_repo(
                    &loaded.config,
                    ctx.identity.as_deref(),
                    true,
                )?);
                let s = crate::backup::backup_namespaces(
                    repo,
                    &loaded.config,
                    &catalog,
                    &cluster,
                    &scope,
                    &args.name,
                    crate::backup::SetOptions {
                        agent_timeout: std::time::Duration::from_secs(args.agent_timeout),
                        pod_timeout: std::time::Duration::from_secs(args.pod_timeout),
                        timeout: std::time::Duration::from_secs(args.timeout),
                        retain_until: retention(&loaded.config, args.retention),
                        helper_image: args.helper_image,
                    },
                )
                .await?;
                out.emit(&s, || render_set(&s));
                if s.status != "complete" {
                    return Err(Error::new(
                        ErrorKind::Partial,
                        format!(
                            "set {} is partial: {} claim(s) not backed up",
                            s.backup_id,
                            s.problems.len()
                        ),
                    )
                    .with_guidance(
                        "the claims are listed above with why; the rest of the set is restorable",
                    ));
                }
                Ok(())
            }
            BackupCommand::List(_)
            | BackupCommand::Describe { .. }
            | BackupCommand::Ls(_)
            | BackupCommand::Diff(_) => {
                unreachable!("run before the catalog is opened")
            }
            BackupCommand::Delete { backup } => {
                let repo = super::listing::repository_id(&catalog, &loaded).await?;
                let row = catalog.delete_backup(repo, &backup).await?;
                out.emit(&serde_json::json!({"deleted": row.id}), || {
                    format!(
                        "deleted backup {} from the catalog; `drctl gc` removes its objects once nothing needs them and their locks expired\n",
                        row.id
                    )
                });
                Ok(())
            }
        }
    }
}

fn render_set(s: &crate::backup::SetSummary) -> String {
    let mut t = format!(
        "set {} `{}` {} in {:.1}s: namespaces {}\n",
        s.backup_id,
        s.name,
        s.status,
        s.seconds,
        s.namespaces.join(", ")
    );
    for m in &s.members {
        t.push_str(&format!(
            "  {:<9} {}  {:<30} {}{}\n",
            m.kind,
            crate::reference::short(&m.backup_id),
            m.name,
            m.status,
            m.node
                .as_ref()
                .map(|n| format!(" (node {n})"))
                .unwrap_or_default()
        ));
    }
    for p in &s.problems {
        t.push_str(&format!(
            "  NOT BACKED UP {}{}: {}\n",
            p.claim,
            p.node
                .as_ref()
                .map(|n| format!(" (node {n})"))
                .unwrap_or_default(),
            p.reason
        ));
    }
    t
}

fn render_summary(s: &Summary) -> String {
    let mut t = format!(
        "backup {} {}\n  files      {} ({} read, {} unchanged)\n  bytes      {} total, {} read, {} new, {} stored in {} pack(s)\n  dedup      {}\n  compressed {}\n  time       {:.1}s\n",
        s.backup_id,
        s.status,
        s.files,
        s.files_read,
        s.files_unchanged,
        super::progress::human(s.bytes),
        super::progress::human(s.bytes_read),
        super::progress::human(s.new_bytes),
        super::progress::human(s.stored_bytes),
        s.packs,
        match (s.dedup_ratio, s.new_bytes) {
            (None, _) => "nothing read".to_string(),
            (Some(_), 0) => "everything read was stored already".to_string(),
            (Some(r), _) => format!("{r:.2}x (bytes read per new byte)"),
        },
        s.compression_ratio
            .map(|r| format!("{r:.2}x (new bytes per stored byte)"))
            .unwrap_or_else(|| "-".into()),
        s.seconds
    );
    if s.skipped_special > 0 {
        t.push_str(&format!(
            "  skipped    {} special file(s)\n",
            s.skipped_special
        ));
    }
    for p in &s.problems {
        t.push_str(&format!("  not backed up: {}: {}\n", p.path, p.error));
    }
    t
}

/// The repository opened for writing (recipients and secret, no identity),
/// with the configured zstd level and the backup's retention.
fn writer(
    config: &crate::config::Config,
    identity: Option<&std::path::Path>,
    given: Option<chrono::Duration>,
) -> Result<crate::backup::Writer> {
    Ok(crate::backup::Writer::new(
        Arc::new(super::open_repo(config, identity, true)?),
        config,
        retention(config, given),
    ))
}

/// When a backup's objects may go: `--retention` from now, or the bucket's
/// `retention_days`; a local repository without `--retention` keeps them.
fn retention(
    config: &crate::config::Config,
    given: Option<chrono::Duration>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    given
        .or_else(|| {
            config
                .repository
                .s3
                .as_ref()
                .map(|s3| chrono::Duration::days(i64::from(s3.retention_days)))
        })
        .map(|d| chrono::Utc::now() + d)
}

fn render_etcd(s: &crate::backup::EtcdSummary) -> String {
    let p = &s.snapshot;
    let mut t = format!(
        "backup {} {}: etcd {} member {} ({})\n",
        s.backup_id, s.status, p.version, p.member_id, p.endpoint
    );
    t.push_str(&format!(
        "  revision {}, {} keys, HashKV {}, DB {}\n",
        p.revision,
        p.key_count.map_or("-".to_string(), |c| c.to_string()),
        p.hash_kv.map_or("-".to_string(), |h| format!("{h:08x}")),
        super::progress::human(p.db_size)
    ));
    t.push_str(&format!(
        "  {} streamed (SHA-256 trailer checked), {} new, {} stored, dedup {}, {:.1} s\n",
        super::progress::human(s.bytes),
        super::progress::human(s.new_bytes),
        super::progress::human(s.stored_bytes),
        s.dedup_ratio
            .map_or("-".to_string(), |r| format!("{r:.2}x")),
        s.seconds
    ));
    if let Some(why) = &s.unrecorded {
        t.push_str(&format!(
            "  warning: key count and HashKV not recorded: {why}; drills check the revision only\n"
        ));
    }
    t
}
