use std::path::PathBuf;

use clap::{Args, Subcommand};
use uuid::Uuid;

use super::{Context, Out};
use crate::config::Loaded;
use crate::error::{Error, ErrorKind, Result};
use crate::repo::Repository;
use crate::repo::manifest::Manifest;
use crate::restore::volume::{Target, restore};

#[derive(Debug, Subcommand)]
pub(crate) enum RestoreCommand {
    /// Restore a volume backup into a directory (or a block image to a file).
    /// Needs the age identity; does not need the catalog.
    Volume(VolumeArgs),
    /// Restore an etcd backup: the snapshot file (--output), a member's data
    /// directory (--data-dir and the member flags), or a proof that it
    /// restores to the keyspace it recorded (--verify). Needs the age
    /// identity; does not need the catalog.
    #[command(group(
        clap::ArgGroup::new("mode").required(true).args(["output", "data_dir", "verify"])
    ))]
    Etcd(EtcdArgs),
    /// Restore API resources: the backup's objects (chosen with the same
    /// scope flags as backups), in dependency order, with server-side apply.
    /// `--dry-run` prints the plan and changes nothing. Needs the age
    /// identity; does not need the catalog.
    Resources(ResourcesArgs),
    /// Restore a namespace set (`drctl backup namespaces`): its resources,
    /// then each claim's data written by the drctl agent of the claim's
    /// node into the volume a helper pod mounts, then the workloads.
    /// `--dry-run` prints the plan. Needs the age identity, the catalog
    /// (the agents' queue) and an agent on each claim's node.
    Namespaces(NamespacesArgs),
}

#[derive(Debug, Args)]
pub(crate) struct NamespacesArgs {
    /// The set: its id, short id, or NAME@latest.
    backup: String,
    #[command(flatten)]
    cluster: super::resources::ClusterArgs,
    /// Restore namespace OLD (objects and claims' data) into NEW:
    /// `shop=shop-restored,...`. The original may still exist.
    #[arg(long, value_delimiter = ',', value_name = "OLD=NEW,...")]
    namespace_mapping: Vec<String>,
    /// What to do with objects that already exist (`skip`, `update`,
    /// `recreate`). A claim that exists keeps its volume and data unless
    /// recreated.
    #[arg(long, value_enum, default_value = "skip")]
    existing: crate::restore::resources::plan::Existing,
    /// Print the plan (objects, claims' data with their nodes, workloads)
    /// and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Give up on a claim whose node's agent does not take its job within
    /// this many seconds.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    agent_timeout: u64,
    /// How long a helper pod may take to run (its volume bound and mounted).
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pod_timeout: u64,
    /// How long the data phase may take in all.
    #[arg(long, default_value_t = 6 * 3600, value_name = "SECONDS")]
    timeout: u64,
    /// Write the data of claims backed up on node OLD on node NEW instead
    /// (a rebuilt cluster's nodes have other names): `old-1=new-1,...`.
    /// NEW must run a drctl agent.
    #[arg(long, value_delimiter = ',', value_name = "OLD=NEW,...")]
    node_mapping: Vec<String>,
    /// The helper pods' image: it only holds the volume mounted.
    #[arg(
        long,
        env = "DRCTL_HELPER_IMAGE",
        default_value = crate::agent::helper::DEFAULT_IMAGE
    )]
    helper_image: String,
}

#[derive(Debug, Args)]
pub(crate) struct ResourcesArgs {
    /// Backup: its id, short id (last 8 hex digits), first or last digits,
    /// or NAME@latest (which needs the catalog).
    backup: String,
    #[command(flatten)]
    scope: super::resources::ScopeArgs,
    #[command(flatten)]
    cluster: super::resources::ClusterArgs,
    /// Restore namespace OLD's objects into NEW: `shop=shop-restored,...`.
    #[arg(long, value_delimiter = ',', value_name = "OLD=NEW,...")]
    namespace_mapping: Vec<String>,
    /// With --namespace-mapping: bring the backup's PersistentVolumes too,
    /// and keep claims bound to them by name. Off by default: a copy must
    /// not take production's disks.
    #[arg(long, requires = "namespace_mapping")]
    mapped_volumes: bool,
    /// What to do with objects that already exist: leave them (`skip`),
    /// apply the backup over them (`update`), or delete and create them
    /// (`recreate`; never for Namespaces and CRDs, which are updated).
    #[arg(long, value_enum, default_value = "skip")]
    existing: crate::restore::resources::plan::Existing,
    /// Print the plan (each object: create, skip, update, recreate, in
    /// order) and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Restore `status` too (through the status subresource).
    #[arg(long)]
    restore_status: bool,
    /// Keep Services' clusterIP(s) (they must be free on the cluster).
    #[arg(long)]
    preserve_service_ips: bool,
    /// Keep Services' nodePorts (they must be free on the cluster).
    #[arg(long)]
    preserve_node_ports: bool,
}

#[derive(Debug, Args)]
pub(crate) struct EtcdArgs {
    /// Backup: its id, short id (last 8 hex digits), first or last digits,
    /// or NAME@latest (which needs the catalog).
    backup: String,
    /// Write the snapshot here, byte for byte as etcd sent it (SHA-256
    /// trailer included), for `etcdutl snapshot restore`.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Make this member's data directory (absent or empty) with
    /// `etcdutl snapshot restore` (or etcdctl where only etcd 3.4 is).
    #[arg(
        long,
        value_name = "DIR",
        requires_all = ["name", "initial_cluster", "initial_advertise_peer_urls"]
    )]
    data_dir: Option<PathBuf>,
    /// Restore into a scratch directory, start a throwaway etcd on loopback
    /// and compare its revision, key count and HashKV with the backup's.
    #[arg(long)]
    verify: bool,
    /// With --data-dir: this member's name.
    #[arg(long, requires = "data_dir")]
    name: Option<String>,
    /// With --data-dir: every member of the restored cluster, NAME=PEER-URL,...
    #[arg(long, requires = "data_dir", value_name = "NAME=URL,...")]
    initial_cluster: Option<String>,
    /// With --data-dir: this member's peer URL(s).
    #[arg(long, requires = "data_dir", value_name = "URLS")]
    initial_advertise_peer_urls: Option<String>,
    /// With --data-dir: the new cluster's token (the same on every member).
    #[arg(long, requires = "data_dir", default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// With --output: replace an existing file.
    #[arg(long, requires = "output")]
    force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct VolumeArgs {
    /// Backup: its id, short id (last 8 hex digits), first or last digits,
    /// or NAME@latest (which needs the catalog).
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
    /// Leave out setuid and setgid bits and `security.*` extended
    /// attributes (file capabilities, labels), for a backup you do not
    /// trust; the summary lists what was left out.
    #[arg(long)]
    no_setuid: bool,
    /// Restore only this path (with all beneath it), a path from the
    /// backup's root or a glob (`logs/**/*.gz`); repeat for more. Only the
    /// directories on the way are read.
    #[arg(long, value_name = "PATH_OR_GLOB", conflicts_with = "block")]
    include: Option<Vec<String>>,
}

impl RestoreCommand {
    pub(crate) fn run(self, ctx: &Context, out: &Out) -> Result<()> {
        let loaded = ctx.load_config()?;
        match self {
            RestoreCommand::Etcd(args) => restore_etcd(ctx, &loaded, out, args),
            RestoreCommand::Resources(args) => restore_resources(ctx, &loaded, out, args),
            RestoreCommand::Namespaces(args) => restore_namespaces(ctx, &loaded, out, args),
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
                let id = resolve_backup(ctx, &loaded, &repo, &args.backup)?;
                let manifest = match &args.include {
                    Some(patterns) => {
                        let select = crate::restore::select::Patterns::new(patterns)?;
                        let m = load_manifest(ctx, &loaded, &repo, id, &select)?;
                        if m.tree.is_none() {
                            return Err(Error::config(format!(
                                "backup {id} was made before drctl kept listings in trees; \
                                 --include needs a newer backup"
                            ))
                            .with_guidance(
                                "restore it whole into a scratch directory and copy what you need",
                            ));
                        }
                        // The root alone: nothing matched.
                        if m.entries.len() <= 1 {
                            return Err(Error::new(
                                ErrorKind::NotFound,
                                format!(
                                    "nothing in backup {id} matches --include {}",
                                    patterns.join(" --include ")
                                ),
                            )
                            .with_guidance(format!(
                                "paths are from the backup's root; list them with `drctl backup ls {id}`"
                            )));
                        }
                        m
                    }
                    None => load_manifest(ctx, &loaded, &repo, id, &crate::repo::tree::All)?,
                };
                if manifest.kind != "volume" {
                    return Err(Error::config(format!(
                        "backup {id} is a {} backup, not a volume backup",
                        manifest.kind
                    ))
                    .with_guidance(format!("restore it with `drctl restore {}`", manifest.kind)));
                }
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
                let options = crate::restore::volume::Options {
                    no_setuid: args.no_setuid,
                };
                let result = restore(&repo, &manifest, &target, options, &|n| bar.inc(n));
                bar.finish_and_clear();
                let summary = result.map_err(|e| {
                    let hint = format!(
                        "the target holds a partial restore, marked as such ({}); fix the cause \
                         and run the restore again with --force, which starts clean{}",
                        crate::restore::volume::MARKER,
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
                    for d in &summary.dropped {
                        t.push_str(&format!("  left out (--no-setuid): {d}\n"));
                    }
                    if summary.left_in_place > 0 {
                        t.push_str(&format!(
                            "  note: {} entr{} already in the target and not in the backup {} left as {} (e.g. {}); the target is not an exact copy of the backup\n",
                            summary.left_in_place,
                            if summary.left_in_place == 1 { "y" } else { "ies" },
                            if summary.left_in_place == 1 { "was" } else { "were" },
                            if summary.left_in_place == 1 { "it was" } else { "they were" },
                            summary.left_in_place_example.as_deref().unwrap_or("?")
                        ));
                    }
                    t
                });
                Ok(())
            }
        }
    }
}

fn restore_resources(
    ctx: &Context,
    loaded: &crate::config::Loaded,
    out: &Out,
    args: ResourcesArgs,
) -> Result<()> {
    use crate::restore::resources::{self as res, Keep, Options};
    // Every flag is checked, the backup found and opened and the cluster
    // reached before the plan is made; nothing is applied before the plan.
    let opts = Options {
        scope: args.scope.scope()?,
        mapping: crate::resources::scope::NamespaceMapping::parse(&args.namespace_mapping)?,
        existing: args.existing,
        mapped_volumes: args.mapped_volumes,
        fresh_volumes: false,
        keep: Keep {
            status: args.restore_status,
            service_ips: args.preserve_service_ips,
            node_ports: args.preserve_node_ports,
        },
    };
    let repo = super::open_repo(&loaded.config, ctx.identity.as_deref(), false)?;
    let id = resolve_backup(ctx, loaded, &repo, &args.backup)?;
    let manifest = open_manifest(&repo, id)?;
    res::check_backup(&manifest)?;
    let handle = tokio::runtime::Handle::current();
    let cluster = handle.block_on(args.cluster.connect(&loaded.config))?;
    let objects = res::load(&repo, &manifest, &opts.scope)?;
    let bar = super::progress::count(0, "objects");
    let progress = |n: Option<u64>| match n {
        Some(total) => bar.set_length(total),
        None => bar.inc(1),
    };
    let report = handle.block_on(res::restore(
        &cluster,
        &manifest,
        objects,
        &opts,
        args.dry_run,
        &progress,
    ));
    bar.finish_and_clear();
    let report = report?;
    out.emit(&report, || super::resources::render_restore(&report));
    let c = &report.summary;
    if c.failed > 0 {
        let what = if report.dry_run {
            format!("{} objects of the plan cannot be restored", c.failed)
        } else {
            format!(
                "{} of {} objects were not restored ({} created, {} updated, {} recreated, {} skipped)",
                c.failed,
                report.steps.len(),
                c.created,
                c.updated,
                c.recreated,
                c.skipped
            )
        };
        return Err(Error::new(ErrorKind::Partial, what).with_guidance(
            "the failed objects are listed above with the reason each; fix the cause and run the \
             restore again (objects restored already are skipped)",
        ));
    }
    Ok(())
}

fn restore_namespaces(
    ctx: &Context,
    loaded: &crate::config::Loaded,
    out: &Out,
    args: NamespacesArgs,
) -> Result<()> {
    use crate::restore::resources::{self as res, Keep};
    use crate::restore::set::{self, VolumeMember};
    let opts = set::Options {
        resources: res::Options {
            scope: crate::resources::scope::Scope::new(&Default::default())?,
            mapping: crate::resources::scope::NamespaceMapping::parse(&args.namespace_mapping)?,
            existing: args.existing,
            mapped_volumes: false,
            fresh_volumes: true,
            keep: Keep::default(),
        },
        agent_timeout: std::time::Duration::from_secs(args.agent_timeout),
        pod_timeout: std::time::Duration::from_secs(args.pod_timeout),
        timeout: std::time::Duration::from_secs(args.timeout),
        helper_image: args.helper_image,
        node_mapping: args
            .node_mapping
            .iter()
            .map(|m| match m.split_once('=') {
                Some((old, new)) if !old.is_empty() && !new.is_empty() => {
                    Ok((old.to_string(), new.to_string()))
                }
                _ => Err(Error::config(format!(
                    "--node-mapping `{m}` is not OLD=NEW"
                ))
                .with_guidance("name the node the set was backed up on and the node to use: `--node-mapping node-b=worker-7`")),
            })
            .collect::<Result<_>>()?,
    };
    let repo = std::sync::Arc::new(super::open_repo(
        &loaded.config,
        ctx.identity.as_deref(),
        false,
    )?);
    let id = resolve_backup(ctx, loaded, &repo, &args.backup)?;
    let set_manifest = open_manifest(&repo, id)?;
    set::check_set(&set_manifest)?;
    let handle = tokio::runtime::Handle::current();
    let catalog = handle.block_on(ctx.catalog(loaded)).map_err(|e| {
        let what = format!(
            "restoring a set needs the catalog (the node agents take their jobs there): {}",
            e.what()
        );
        Error::new(e.kind(), what).with_guidance(
            "restore its members one by one meanwhile: `drctl restore resources` and \
             `drctl restore volume` (`drctl backup describe` lists them)",
        )
    })?;
    let rows = handle.block_on(catalog.set_members(id))?;
    let mut resources = None;
    let mut volumes = Vec::new();
    for m in &set_manifest.members {
        let manifest = open_manifest(&repo, *m)?;
        match manifest.kind.as_str() {
            "resources" => resources = Some(manifest),
            "volume" => volumes.push(VolumeMember {
                backup_id: *m,
                node: rows
                    .iter()
                    .find(|r| r.id == *m)
                    .and_then(|r| r.stats.get("node"))
                    .and_then(|n| n.as_str())
                    .map(str::to_string),
                bytes: manifest.totals.map_or(0, |t| t.bytes),
                name: manifest.name,
            }),
            other => {
                return Err(Error::new(
                    ErrorKind::Integrity,
                    format!("set {id} lists member {m}, a {other} backup"),
                ));
            }
        }
    }
    let resources = resources.ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            format!("set {id} has no resources member: its namespaces were not backed up"),
        )
        .with_guidance("restore its volumes one by one with `drctl restore volume`")
    })?;
    let cluster = handle.block_on(args.cluster.connect(&loaded.config))?;
    let objects = res::load(&repo, &resources, &opts.resources.scope)?;
    let bar = super::progress::counter(if args.dry_run {
        "planning"
    } else {
        "restoring the set"
    });
    let report = handle.block_on(set::restore(
        repo.clone(),
        &catalog,
        &cluster,
        &set_manifest,
        &resources,
        objects,
        volumes,
        &opts,
        args.dry_run,
    ));
    bar.finish_and_clear();
    let report = report?;
    out.emit(&report, || render_set(&report));
    let failed = report.failures();
    if failed > 0 {
        return Err(Error::new(
            ErrorKind::Partial,
            if report.dry_run {
                format!("{failed} object(s) or claim(s) of the plan cannot be restored")
            } else {
                format!("{failed} object(s) or claim(s) of set {id} were not restored")
            },
        )
        .with_guidance(
            "each is listed above with why; fix the cause and run the restore again (what was \
             restored is skipped)",
        ));
    }
    Ok(())
}

fn render_set(r: &crate::restore::set::Report) -> String {
    use crate::restore::set::ClaimAction;
    let mut t = format!(
        "{} set {}: objects up to the claims first, then each claim's data, then the workloads\n",
        if r.dry_run {
            "plan to restore"
        } else {
            "restored"
        },
        r.set_id
    );
    // The claims' data goes where it happens: after the claims, before
    // the first workload.
    let mut claims = String::from("         each claim's data, before any workload:\n");
    for c in &r.claims {
        let what = match (c.outcome, c.action) {
            (Some(o), _) => serde_json::to_value(o).unwrap(),
            (None, a) => serde_json::to_value(a).unwrap(),
        };
        claims.push_str(&format!(
            "         {:<9} {}{} {}{}{}{}\n",
            what.as_str().unwrap_or(""),
            c.claim,
            c.from
                .as_ref()
                .map(|f| format!(" (from {f})"))
                .unwrap_or_default(),
            super::progress::human(c.bytes),
            c.node
                .as_ref()
                .map(|n| match &c.from_node {
                    Some(from) => format!(" on {n} (backed up on {from})"),
                    None => format!(" on {n}"),
                })
                .unwrap_or_default(),
            c.helper_pod
                .as_ref()
                .filter(|_| c.action == ClaimAction::Restore)
                .map(|p| format!(" via helper pod {p}"))
                .unwrap_or_default(),
            c.reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
        ));
    }
    t.push_str(&super::resources::render_restore_with(
        &r.resources,
        &claims,
    ));
    t.push_str(&format!("took {:.1} s\n", r.seconds));
    t
}

fn restore_etcd(
    ctx: &Context,
    loaded: &crate::config::Loaded,
    out: &Out,
    args: EtcdArgs,
) -> Result<()> {
    use crate::restore::etcd;
    let flags = match (
        &args.name,
        &args.initial_cluster,
        &args.initial_advertise_peer_urls,
    ) {
        (Some(name), Some(cluster), Some(urls)) => Some(etcd::MemberFlags {
            name: name.clone(),
            initial_cluster: cluster.clone(),
            initial_advertise_peer_urls: urls.clone(),
            initial_cluster_token: args.initial_cluster_token.clone(),
        }),
        _ => None,
    };
    // Refuse bad flags and targets before touching the repository.
    if let (Some(dir), Some(f)) = (&args.data_dir, &flags) {
        f.check()?;
        etcd::check_data_dir(dir)?;
        etcd::Tool::find()?;
    }
    if let Some(o) = &args.output {
        etcd::check_output(o, args.force)?;
    }
    let repo = super::open_repo(&loaded.config, ctx.identity.as_deref(), false)?;
    let id = resolve_backup(ctx, loaded, &repo, &args.backup)?;
    let manifest = open_manifest(&repo, id)?;
    let info = etcd::snapshot_info(&manifest)?.clone();
    let bar = super::progress::bytes(Some(manifest.entries[0].size), "restored");
    let progress = |n| bar.inc(n);
    let failed = |e: Error| {
        let kind = e.kind();
        let guidance = e.guidance().map(str::to_string);
        let err = Error::new(
            kind,
            format!("restore of etcd backup {id} failed: {}", e.what()),
        )
        .with_source(e);
        match guidance {
            Some(g) => err.with_guidance(g),
            None => err,
        }
    };
    if let Some(output) = &args.output {
        let done = etcd::write_snapshot(&repo, &manifest, output, args.force, &progress);
        bar.finish_and_clear();
        let done = done.map_err(failed)?;
        out.emit(&done, || {
            format!(
                "wrote etcd backup {} to {}\n  {} (SHA-256 trailer checked), revision {}\n  \
                 next: etcdutl snapshot restore {} --data-dir DIR --name ... (or drctl restore etcd {} --data-dir DIR ...)\n",
                done.backup_id,
                done.path,
                super::progress::human(done.bytes),
                done.revision,
                done.path,
                done.backup_id
            )
        });
        return Ok(());
    }
    if let (Some(dir), Some(f)) = (&args.data_dir, &flags) {
        let done = etcd::restore_data_dir(&repo, &manifest, dir, f, &progress);
        bar.finish_and_clear();
        let done = done.map_err(failed)?;
        out.emit(&done, || {
            let mut t = format!(
                "restored etcd backup {} (revision {}) into {} for member {} with {}\nnext steps:\n",
                done.backup_id, done.revision, done.data_dir, done.member.name, done.tool
            );
            for (i, s) in done.next_steps.iter().enumerate() {
                t.push_str(&format!("  {}. {s}\n", i + 1));
            }
            t
        });
        return Ok(());
    }
    let report = etcd::verify(&repo, &manifest, &progress);
    bar.finish_and_clear();
    let report = report.map_err(failed)?;
    out.emit(&report, || {
        let mut t = format!(
            "etcd backup {} restored with {} and started on etcd {} in {:.1} s\n",
            report.backup_id, report.tool, report.etcd_version, report.total_seconds
        );
        for c in &report.checks {
            t.push_str(&format!(
                "  {:<10} recorded {:<12} restored {:<12} {}\n",
                c.what,
                c.recorded.as_deref().unwrap_or("-"),
                c.restored,
                c.outcome
            ));
        }
        t.push_str(if report.ok {
            "the restored keyspace equals the backed-up one\n"
        } else {
            "MISMATCH: the restored keyspace differs from what the backup recorded\n"
        });
        t
    });
    if !report.ok {
        return Err(Error::new(
            ErrorKind::Integrity,
            format!(
                "etcd backup {id} (revision {}) does not restore to what it recorded",
                info.revision
            ),
        )
        .with_guidance("do not rely on this backup; take a new one and run the drill again"));
    }
    Ok(())
}

/// The backup a reference names (see [`crate::reference`]), found in the
/// bucket's manifests so that restore works with the catalog gone.
/// `NAME@latest` needs the catalog. A reference the bucket does not hold
/// is looked up in the catalog, when there is one, to say why (a backup
/// that failed or was interrupted has no manifest).
pub(crate) fn resolve_backup(
    ctx: &Context,
    loaded: &Loaded,
    repo: &Repository,
    given: &str,
) -> Result<Uuid> {
    use crate::reference::Reference;
    let reference = Reference::parse(given)?;
    if let Reference::Latest(_) | Reference::At(..) = reference {
        let row = catalog_lookup(ctx, loaded, given).map_err(|e| {
            let what = e.what().to_string();
            Error::new(e.kind(), what).with_guidance(
                "NAME@latest and NAME@TIME need the catalog; without it, `drctl backup list --from-bucket` \
                 lists the backups in the bucket and their ids",
            )
        })?;
        return Ok(row.id);
    }
    let candidates: Vec<(Uuid, String)> = match reference {
        // Present when a version of its manifest is (a delete marker on
        // top hides nothing: restore reads the original).
        Reference::Id(id) => repo
            .store
            .versions(&crate::repo::manifest::manifest_key(id))?
            .iter()
            .any(|v| !v.delete_marker)
            .then(|| (id, String::new()))
            .into_iter()
            .collect(),
        _ => crate::verify::manifest_ids(repo)?
            .into_iter()
            .filter(|id| reference.matches(id))
            .map(|id| (id, String::new()))
            .collect(),
    };
    let place = repo.store.location();
    match reference.pick(given, candidates, &place) {
        Err(e) if e.kind() == ErrorKind::NotFound => Err(explain_missing(ctx, loaded, given, e)),
        other => other,
    }
}

/// Why a backup the bucket does not hold is missing, when the catalog
/// knows it; the original error otherwise.
fn explain_missing(ctx: &Context, loaded: &Loaded, given: &str, missing: Error) -> Error {
    let Ok(row) = catalog_lookup(ctx, loaded, given) else {
        return missing;
    };
    if matches!(row.status.as_str(), "complete" | "partial") {
        return missing;
    }
    Error::new(
        ErrorKind::NotFound,
        format!(
            "backup {} ({} `{}`) is {}: it never finished, so there is nothing to restore{}",
            row.id,
            row.kind,
            row.name,
            row.status,
            row.error
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ),
    )
    .with_guidance(format!(
        "restore the newest usable one: `drctl restore {} {}@latest`",
        row.kind, row.name
    ))
}

/// A backup from the catalog, from blocking code.
fn catalog_lookup(
    ctx: &Context,
    loaded: &Loaded,
    given: &str,
) -> Result<crate::catalog::BackupRow> {
    tokio::runtime::Handle::current().block_on(async {
        let catalog = ctx.catalog(loaded).await?;
        let repo = super::listing::repository_id(&catalog, loaded).await?;
        catalog.find_backup(repo, given).await
    })
}

/// The manifest of backup `id`, authenticated; a volume backup's listing
/// filled in from its trees for the paths `select` takes.
pub(crate) fn load_manifest(
    ctx: &Context,
    loaded: &Loaded,
    repo: &Repository,
    id: Uuid,
    select: &dyn crate::repo::tree::Select,
) -> Result<Manifest> {
    let mut manifest = open_manifest(repo, id)?;
    if manifest.tree.is_some() {
        let packs = manifest.packs.clone();
        with_locate(ctx, loaded, repo, packs, |locate| {
            crate::repo::tree::fill(repo, &mut manifest, locate, select)
        })?;
    }
    Ok(manifest)
}

pub(crate) use crate::restore::open_manifest;

/// The catalog, when one is configured and answers: what locates chunks
/// fastest. Without it a reader still works, from the bucket alone.
pub(crate) fn optional_catalog(ctx: &Context, loaded: &Loaded) -> Option<crate::catalog::Catalog> {
    if loaded.config.catalog.url().is_err() {
        return None;
    }
    match tokio::runtime::Handle::current().block_on(ctx.catalog(loaded)) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e.report(), "no catalog: locating chunks from the packs' indexes, which is slower");
            None
        }
    }
}

/// Runs `f` with the fastest way to locate a backup's chunks and trees: the
/// catalog when one is configured and answers, the indexes of `packs` (the
/// backup's) for whatever it does not. Locations are hints: what is read
/// there is checked against its id either way.
pub(crate) fn with_locate<T>(
    ctx: &Context,
    loaded: &Loaded,
    repo: &Repository,
    packs: Vec<String>,
    f: impl FnOnce(&dyn crate::repo::tree::Locate) -> Result<T>,
) -> Result<T> {
    let handle = tokio::runtime::Handle::current();
    let catalog = optional_catalog(ctx, loaded);
    crate::backup::with_locate(&handle, catalog.as_ref(), repo, packs, f)
}
