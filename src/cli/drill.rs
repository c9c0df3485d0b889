//! `drctl drill run|list|report` and `drctl worker --drills`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};

use super::{Context, Format, Out};
use crate::config::Loaded;
use crate::drill::{self, DrillSpec, Probe, TargetSpec};
use crate::error::{Error, ErrorKind, Result};

#[derive(Debug, Subcommand)]
pub(crate) enum DrillCommand {
    /// Restore backups into scratch space, check them, measure RTO and RPO,
    /// and record a report (catalog and bucket). A configured drill by
    /// NAME, or the backups given with --backup / --schedule. Needs the age
    /// identity and the catalog. Exit 0 passed, 6 data did not verify, 8
    /// partially failed, 1 failed otherwise (an objective breached).
    Run(RunArgs),
    /// Drill runs, newest first.
    List {
        /// Only this drill's runs.
        #[arg(long)]
        drill: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// One run's report: `-o json` (canonical), `-o md`, `-o html` (one
    /// self-contained page), text otherwise.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// A drill from the configuration's `drills:`, or a backup as
    /// NAME@latest (or NAME@TIME).
    #[arg(conflicts_with_all = ["backup", "schedule"])]
    name: Option<String>,
    /// A backup to restore: its id, short id, or NAME@latest. Repeat for
    /// more.
    #[arg(long, value_name = "REF")]
    backup: Vec<String>,
    /// The latest complete backup of this schedule (or backup name).
    #[arg(long, value_name = "NAME")]
    schedule: Vec<String>,
    /// For volume backups given here: a command run on the restored
    /// directory (`{path}` in it is replaced, DRCTL_RESTORED_PATH set);
    /// passes by exiting 0. Run with `sh -c`.
    #[arg(long, value_name = "COMMAND")]
    probe: Option<String>,
    /// RTO objective, seconds.
    #[arg(long, value_name = "SECONDS")]
    rto_objective: Option<u64>,
    /// RPO objective, seconds.
    #[arg(long, value_name = "SECONDS")]
    rpo_objective: Option<u64>,
    /// Keep the scratch space even when the drill passes, for this long.
    #[arg(long, value_name = "SECONDS")]
    keep_seconds: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    /// The run's id (or its first or last hex digits).
    id: String,
    /// Write the report here instead of stdout.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Read the sealed copy from the bucket (`reports/<id>`, authenticated)
    /// instead of the catalog's; needs the age identity and the full id.
    #[arg(long)]
    from_bucket: bool,
}

impl DrillCommand {
    pub(crate) async fn run(self, ctx: &Context, out: &Out) -> Result<()> {
        let loaded = ctx.load_config()?;
        match self {
            DrillCommand::Run(args) => run(ctx, &loaded, out, args).await,
            DrillCommand::List { drill, limit } => {
                let catalog = ctx.catalog(&loaded).await?;
                let repo = super::listing::repository_id(&catalog, &loaded).await?;
                let runs = catalog.drill_runs(repo, drill.as_deref(), limit).await?;
                out.emit(&runs, || {
                    let mut t = format!(
                        "{:<36}  {:<16}  {:<9}  {:<16}  {:>9}  {:>10}  {}\n",
                        "ID", "DRILL", "TRIGGER", "VERDICT", "RTO", "RPO", "STARTED"
                    );
                    for r in &runs {
                        t.push_str(&format!(
                            "{:<36}  {:<16}  {:<9}  {:<16}  {:>9}  {:>10}  {}\n",
                            r.id,
                            r.drill,
                            r.trigger,
                            r.verdict,
                            drill::render::human_seconds(r.rto_seconds),
                            drill::render::human_seconds(r.rpo_seconds),
                            r.started_at.format("%Y-%m-%d %H:%M:%S UTC")
                        ));
                    }
                    if runs.is_empty() {
                        t.push_str("(no drill runs yet: `drctl drill run`)\n");
                    }
                    t
                });
                Ok(())
            }
            DrillCommand::Report(args) => report(ctx, &loaded, out, args).await,
        }
    }
}

async fn run(ctx: &Context, loaded: &Loaded, out: &Out, args: RunArgs) -> Result<()> {
    let config = &loaded.config;
    // `drctl drill run shop@latest`: a backup, not a drill.
    let mut backups = args.backup.clone();
    let name = match &args.name {
        Some(n) if n.contains('@') => {
            backups.push(n.clone());
            None
        }
        other => other.clone(),
    };
    let spec = match &name {
        Some(name) => config
            .drills
            .iter()
            .find(|d| &d.name == name)
            .cloned()
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("no drill named {name:?} in {}", loaded.path.display()),
                )
                .with_guidance(
                    "declare it under `drills:`, or name backups with --backup / --schedule",
                )
            })?,
        None => {
            let probe = args.probe.as_ref().map(|p| Probe {
                command: vec!["sh".into(), "-c".into(), p.clone()],
                timeout_seconds: 600,
            });
            let targets: Vec<TargetSpec> = backups
                .iter()
                .cloned()
                .chain(args.schedule.iter().map(|s| format!("{s}@latest")))
                .map(|backup| TargetSpec {
                    backup,
                    probe: probe.clone(),
                })
                .collect();
            if targets.is_empty() {
                return Err(Error::config("nothing to drill").with_guidance(
                    "name a configured drill, or give --backup ID / --schedule NAME",
                ));
            }
            let mut spec = DrillSpec::manual(targets);
            spec.objectives.rto_seconds = args.rto_objective;
            spec.objectives.rpo_seconds = args.rpo_objective;
            spec
        }
    };
    let mut spec = spec;
    if let Some(keep) = args.keep_seconds {
        spec.cleanup.on_success_remove = false;
        spec.cleanup.on_failure_keep_seconds = keep;
    }
    spec.validate()?;
    let identity = identity_file(ctx, config)?;
    let catalog = ctx.catalog(loaded).await?;
    let repo_id = super::listing::repository_id(&catalog, loaded).await?;
    let store = super::open_store(config)?;
    let (repo, timed) = super::blocking(|| drill::open_repository(config, store, &identity))?;
    let bar = super::progress::counter("steps");
    let say = |line: &str| {
        bar.set_message(line.to_string());
        bar.inc(1);
        tracing::info!(drill = %spec.name, "{line}");
    };
    let handle = tokio::runtime::Handle::current();
    let env = drill::Env {
        repo: &repo,
        timed: &timed,
        catalog: &catalog,
        repo_id,
        config,
        handle: &handle,
        trigger: "manual",
        job_id: None,
        run_by: whoami(),
        say: &say,
    };
    let report = super::blocking(|| drill::run(&env, &spec));
    bar.finish_and_clear();
    let report = report?;
    out.emit(&report, || summary(&report));
    match drill::verdict_error(&report) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The text `drill run` prints: verdict, RTO and RPO, checks.
fn summary(r: &drill::Report) -> String {
    use drill::render::human_seconds as h;
    let mut t = format!(
        "drill {} ({}): {}\n",
        r.drill_id,
        r.drill,
        r.verdict.as_str().replace('_', " ").to_uppercase()
    );
    if let Some(f) = &r.failure {
        t.push_str(&format!("  failed at {}: {}\n", f.stage, f.reason));
    }
    let p = &r.rto.phases;
    t.push_str(&format!(
        "  RTO {} ({}): plan {}, fetch+decrypt {}, write {}, start {}, checks {}\n",
        h(r.rto.seconds),
        objective(r.rto.result, r.rto.objective_seconds),
        h(p.plan),
        h(p.fetch_decrypt),
        h(p.write),
        h(p.start),
        h(p.checks)
    ));
    t.push_str(&format!(
        "  RPO {} ({}){}\n",
        h(r.rpo.seconds),
        objective(r.rpo.result, r.rpo.objective_seconds),
        r.rpo
            .max_gap_30d_seconds
            .map(|g| format!("; largest gap over 30 days {}", h(g)))
            .unwrap_or_default()
    ));
    for b in &r.backups {
        t.push_str(&format!(
            "  backup {} {} `{}` from {}\n",
            b.backup_id,
            b.kind,
            b.name,
            b.snapshot_time.format("%Y-%m-%d %H:%M:%S UTC")
        ));
    }
    for c in &r.checks {
        t.push_str(&format!(
            "    {:<9} {:<18} {:<15} {}\n",
            c.source,
            c.name,
            status(c.status),
            c.summary
        ));
    }
    t.push_str(&format!(
        "  cleanup: {}{}\n  report: drctl drill report {} -o html --output drill.html\n",
        r.cleanup.result,
        r.cleanup
            .kept_until
            .map(|k| format!(" until {}", k.to_rfc3339()))
            .unwrap_or_default(),
        r.drill_id
    ));
    t
}

fn objective(r: drill::report::Objective, o: Option<f64>) -> String {
    use drill::report::Objective::*;
    let o = o.map(drill::render::human_seconds).unwrap_or_default();
    match r {
        Pass => format!("objective {o}: pass"),
        Breach => format!("objective {o}: BREACH"),
        None => "no objective".into(),
    }
}

fn status(s: drill::report::CheckStatus) -> &'static str {
    use drill::report::CheckStatus::*;
    match s {
        Passed => "passed",
        Failed => "FAILED",
        NotObservable => "not observable",
        Skipped => "skipped",
    }
}

async fn report(ctx: &Context, loaded: &Loaded, out: &Out, args: ReportArgs) -> Result<()> {
    let report = if args.from_bucket {
        let id: uuid::Uuid = args.id.parse().map_err(|_| {
            Error::config(format!("{:?} is not a full drill run id", args.id))
                .with_guidance("--from-bucket needs the whole id `drctl drill list` prints")
        })?;
        let repo =
            super::blocking(|| super::open_repo(&loaded.config, ctx.identity.as_deref(), false))?;
        super::blocking(|| {
            let key = drill::report::report_key(id);
            let read = crate::store::read_original(&*repo.store, &key, "drill report", 64 << 20)?;
            drill::report::open(id, &read.bytes, &repo.secret, repo.identity()?)
        })?
    } else {
        let catalog = ctx.catalog(loaded).await?;
        let repo = super::listing::repository_id(&catalog, loaded).await?;
        catalog.drill_report(repo, &args.id).await?
    };
    let text = match out.format() {
        Format::Json => serde_json::to_string_pretty(&report).expect("reports serialise") + "\n",
        Format::Html => drill::render::html(&report),
        Format::Md | Format::Text => drill::render::markdown(&report),
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, text).map_err(|e| {
                Error::io(
                    e,
                    ErrorKind::Failed,
                    format!("cannot write {}", path.display()),
                )
            })?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// Work drill jobs (the only kind a worker takes today). Holds the age
    /// identity: run it apart from `drctl server`, which never does.
    #[arg(long, required = true)]
    drills: bool,
}

impl WorkerArgs {
    pub(crate) async fn run(self, ctx: &Context) -> Result<()> {
        let _ = self.drills;
        let loaded = ctx.load_config()?;
        let config = Arc::new(loaded.config.clone());
        let identity = identity_file(ctx, &config)?;
        let catalog = ctx.catalog(&loaded).await?;
        let store = super::open_store(&config)?;
        let opened = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || drill::open_repository(&config, store, &identity))
                .await
                .map_err(|e| {
                    Error::new(ErrorKind::Failed, "opening the repository panicked").with_source(e)
                })??
        };
        let (repo, timed) = opened;
        let repo_id = catalog
            .ensure_repository(&repo.config, &repo.store.location())
            .await?;
        let worker = Arc::new(drill::worker::Worker {
            catalog,
            repo: Arc::new(repo),
            timed,
            repo_id,
            config,
            holder: format!(
                "drill-worker-{}-{}",
                crate::server::hostname(),
                std::process::id()
            ),
        });
        let stop = super::stop_on_signal();
        drill::worker::work(worker, stop).await
    }
}

/// The age identity a drill decrypts with: `--identity`,
/// `DRCTL_IDENTITY_FILE` or `encryption.identity_file`.
fn identity_file(ctx: &Context, config: &crate::config::Config) -> Result<PathBuf> {
    ctx.identity
        .clone()
        .or_else(|| config.encryption.identity_file.clone())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Permission,
                "a drill decrypts: it needs the age identity",
            )
            .with_guidance(
                "pass --identity FILE, set DRCTL_IDENTITY_FILE, or set encryption.identity_file",
            )
        })
}

fn whoami() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    format!("{user}@{host}")
}
