//! The `drctl` command line: parse, set up logging, run one command, map the
//! result to an exit code. Commands are thin: they load the config, call the
//! library and print; the work is done in the library so the server and the
//! tests use the same code.

mod agent;
mod backup;
mod browse;
mod catalog;
mod config;
mod dev;
mod doctor;
mod drill;
mod gc;
mod key;
// The API returns the listing `backup list -o json` prints.
pub(crate) mod listing;
mod output;
pub(crate) mod progress;
mod repo;
mod resources;
mod restore;
mod schedule;
mod verify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::catalog::Catalog;
use crate::config::{Config, DEFAULT_CONFIG_PATH, ENV_CONFIG, Loaded, Repository as Backend};
use crate::error::{Error, Result};
use crate::repo::{Identity, Keys, Recipients, RepoSecret, Repository};
use crate::store::Store;
pub use output::Format;
use output::Out;

/// Backup and disaster recovery for Kubernetes.
///
/// Exit codes: 0 ok, 1 failed, 2 bad command line, 3 bad configuration,
/// 4 a service is unavailable, 5 permission denied, 6 integrity failure,
/// 7 not found, 8 partial success (docs/exit-codes.md).
#[derive(Debug, Parser)]
#[command(
    name = "drctl",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = ENV_CONFIG, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Output format: text for people, json for scripts; md and html for
    /// `drill report` (other commands print text). (`--format`, not
    /// `--output`: `restore etcd --output FILE` names a file.)
    #[arg(short = 'o', long = "format", global = true, value_enum, default_value_t = Format::Text)]
    format: Format,

    /// age identity file, for commands that decrypt (restore, verify).
    /// Overrides encryption.identity_file and DRCTL_IDENTITY_FILE.
    #[arg(long, global = true, value_name = "FILE")]
    identity: Option<PathBuf>,

    /// More log detail on stderr (-v info, -vv debug). DRCTL_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the drctl version and the repository format version it uses.
    Version,
    /// Work with the configuration file.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Check the setup in one go: configuration, catalog, bucket, clock,
    /// etcd, Kubernetes permissions and the age identity, for one role;
    /// a fix for each failure (docs/doctor.md). Exit 1 when a check failed.
    Doctor(doctor::DoctorArgs),
    /// Manage the PostgreSQL catalog schema.
    #[command(subcommand)]
    Catalog(catalog::CatalogCommand),
    /// Manage age keys.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Create or inspect the repository.
    #[command(subcommand)]
    Repo(repo::RepoCommand),
    /// Take backups, list and describe them.
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// Restore a backup (needs the age identity, not the catalog).
    #[command(subcommand)]
    Restore(restore::RestoreCommand),
    /// Check that the repository holds what the backups need.
    Verify(verify::VerifyArgs),
    /// Delete what no live backup needs, once its lock has expired.
    Gc(gc::GcArgs),
    /// Run the control plane: schedules, retention, gc, the HTTP API and
    /// /metrics, until SIGTERM. Applies pending catalog migrations first.
    Server(schedule::ServerArgs),
    /// List, describe, pause, resume or run the server's schedules.
    #[command(subcommand)]
    Schedule(schedule::ScheduleCommand),
    /// What retention keeps and deletes, and why.
    #[command(subcommand)]
    Retention(schedule::RetentionCommand),
    /// Restore drills: run one, list runs, print a report.
    #[command(subcommand)]
    Drill(drill::DrillCommand),
    /// The node agent: backs up (and restores) the volumes of pods on its
    /// node, for namespace backup sets. One per node (a DaemonSet).
    Agent(agent::AgentArgs),
    /// Work the drill jobs `drctl server` schedules (`--drills`): the one
    /// long-running process that holds the age identity.
    Worker(drill::WorkerArgs),
    /// Development tools: the stand-in Kubernetes API server.
    #[command(subcommand)]
    Dev(dev::DevCommand),
}

/// Entry point of the `drctl` binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_logging(cli.verbose);
    crate::install_crypto_provider();
    let out = Out::new(cli.format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, &out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            out.error(&err);
            err.exit_code()
        }
    }
}

/// A command line clap refused. With `-o json` anywhere on it, scripts get
/// the error as JSON on stdout (as every other error), exit 2; `--help` and
/// `--version` print as usual.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind as Clap;
    if matches!(
        e.kind(),
        Clap::DisplayHelp | Clap::DisplayVersion | Clap::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    // clap's usage line lists the options that were given (or set in the
    // environment, as DRCTL_CONFIG sets --config) as if they were
    // required: the global options never are.
    let rendered: String = e
        .render()
        .to_string()
        .lines()
        .map(|l| {
            if l.starts_with("Usage: ") {
                l.replace(" --config <FILE>", "")
                    .replace(" --format <FORMAT>", "")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    if !wants_json(std::env::args().skip(1)) {
        eprintln!("{}", rendered.trim_end());
        return ExitCode::from(2);
    }
    let (what, rest) = rendered
        .split_once("\nUsage: ")
        .map_or((rendered.as_str(), ""), |(w, r)| (w, r));
    let message = what
        .trim_start_matches("error: ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let usage = rest.lines().next().unwrap_or_default();
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "error": {
                "kind": "usage",
                "exit_code": 2,
                "message": message,
                "causes": [],
                "guidance": format!("usage: {usage}; `--help` describes every option"),
            }
        }))
        .expect("errors serialise")
    );
    ExitCode::from(2)
}

/// Whether the arguments ask for JSON output (`-o json`, `-ojson`,
/// `--format json`, `--format=json`).
fn wants_json(args: impl Iterator<Item = String>) -> bool {
    let args: Vec<String> = args.collect();
    args.iter().enumerate().any(|(i, a)| {
        matches!(a.as_str(), "-ojson" | "--format=json" | "-o=json")
            || (matches!(a.as_str(), "-o" | "--format")
                && args.get(i + 1).is_some_and(|n| n == "json"))
    })
}

async fn run(cli: Cli, out: &Out) -> Result<()> {
    let ctx = Context {
        config_path: cli.config,
        identity: cli.identity,
    };
    match cli.command {
        Command::Version => {
            out.emit(
                &serde_json::json!({
                    "version": crate::VERSION,
                    "repository_format": crate::REPOSITORY_FORMAT_VERSION,
                }),
                || {
                    format!(
                        "drctl {}\nrepository format {}\n",
                        crate::VERSION,
                        crate::REPOSITORY_FORMAT_VERSION
                    )
                },
            );
            Ok(())
        }
        Command::Config(cmd) => cmd.run(&ctx, out),
        Command::Doctor(cmd) => cmd.run(&ctx, out).await,
        Command::Catalog(cmd) => cmd.run(&ctx, out).await,
        Command::Key(cmd) => cmd.run(out),
        Command::Repo(cmd) => cmd.run(&ctx, out),
        Command::Backup(cmd) => cmd.run(&ctx, out).await,
        Command::Restore(cmd) => blocking(move || cmd.run(&ctx, out)),
        Command::Verify(cmd) => blocking(move || cmd.run(&ctx, out)),
        Command::Gc(cmd) => cmd.run(&ctx, out).await,
        Command::Server(cmd) => cmd.run(&ctx).await,
        Command::Schedule(cmd) => cmd.run(&ctx, out).await,
        Command::Retention(cmd) => cmd.run(&ctx, out).await,
        Command::Drill(cmd) => cmd.run(&ctx, out).await,
        Command::Worker(cmd) => cmd.run(&ctx).await,
        Command::Agent(cmd) => cmd.run(&ctx).await,
        Command::Dev(cmd) => cmd.run(out).await,
    }
}

/// A token cancelled on the first SIGTERM or SIGINT: the long-running
/// roles (the drill worker, the agent) stop claiming work then, and let
/// what runs finish or be given back by its lease.
fn stop_on_signal() -> tokio_util::sync::CancellationToken {
    let stop = tokio_util::sync::CancellationToken::new();
    let cancel = stop.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        tracing::info!("stopping: no new work is claimed");
        cancel.cancel();
    });
    stop
}

/// Runs blocking work (restore, verify) without stalling the runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// What every command may need from the global flags.
pub(crate) struct Context {
    config_path: Option<PathBuf>,
    identity: Option<PathBuf>,
}

impl Context {
    fn config_path(&self) -> PathBuf {
        self.config_path
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
    }

    fn load_config(&self) -> Result<Loaded> {
        let loaded = Config::load(&self.config_path())?;
        for w in &loaded.warnings {
            tracing::warn!(warning = %w, "configuration");
        }
        Ok(loaded)
    }

    /// The catalog, its schema checked to be current.
    async fn catalog(&self, loaded: &Loaded) -> Result<Catalog> {
        let catalog = Self::connect_catalog(loaded).await?;
        catalog.require_current().await?;
        Ok(catalog)
    }

    /// The catalog whatever its schema: for the commands that migrate it
    /// (`catalog migrate`, `server`) or report on it (`catalog status`).
    async fn connect_catalog(loaded: &Loaded) -> Result<Catalog> {
        Catalog::connect_with_timeout(
            loaded.config.catalog.url()?,
            loaded.config.catalog.timeout_seconds,
        )
        .await
    }
}

/// The store the configuration names.
fn open_store(config: &Config) -> Result<Arc<dyn Store>> {
    match config.repository.backend() {
        Backend::Local(local) => Ok(Arc::new(crate::store::local::LocalStore::new(&local.path))),
        Backend::S3(s3) => Ok(Arc::new(crate::store::s3::S3Store::connect(s3)?)),
    }
}

/// Where the configured repository is, as the catalog records it, without
/// connecting to it: catalog-only commands need no store client.
fn store_location(config: &Config) -> String {
    match config.repository.backend() {
        Backend::Local(local) => crate::store::local::location(&local.path),
        Backend::S3(s3) => crate::store::s3::location(&s3.bucket, &s3.prefix),
    }
}

/// Opens the repository with what the configuration (and flags) hold. A
/// writer holds recipients and the repository secret and never loads an
/// identity, even one the configuration names (a config shared with restore
/// hosts may): nothing that runs on a schedule can decrypt. A reader needs
/// the identity.
fn open_repo(config: &Config, identity: Option<&Path>, write: bool) -> Result<Repository> {
    let store = open_store(config)?;
    let enc = &config.encryption;
    if write && identity.is_some() {
        return Err(Error::config(
            "--identity is for commands that decrypt; backups never load the identity",
        )
        .with_guidance(
            "drop --identity: writers hold the recipients and encryption.repository_secret_file",
        ));
    }
    let identity_path = identity
        .map(Path::to_path_buf)
        .or_else(|| enc.identity_file.clone())
        .filter(|_| !write);
    let identity = match (&identity_path, write) {
        (Some(p), _) => Some(Identity::from_file(p)?),
        (None, true) => None,
        (None, false) => {
            return Err(Error::new(
                crate::ErrorKind::Permission,
                "this command needs the age identity",
            )
            .with_guidance(
                "pass --identity FILE, set DRCTL_IDENTITY_FILE, or set encryption.identity_file",
            ));
        }
    };
    // A reader with a secret file too checks the stored secret against it.
    let secret = enc
        .repository_secret_file
        .as_deref()
        .map(RepoSecret::from_file)
        .transpose()?;
    let recipients = if write {
        Some(Recipients::parse(&enc.recipients)?)
    } else {
        None
    };
    Repository::open(
        store,
        Keys {
            recipients,
            secret,
            identity,
        },
        enc.repository_fingerprint.as_deref(),
    )
}

/// The repository as a writer opens it (recipients and the repository
/// secret, never the identity), off the runtime's threads: the long-running
/// roles that write (`server`, `agent`) start with it.
async fn open_writer(config: &Config, identity: Option<PathBuf>) -> Result<Repository> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || open_repo(&config, identity.as_deref(), true))
        .await
        .map_err(|e| {
            Error::new(crate::ErrorKind::Failed, "opening the repository panicked").with_source(e)
        })?
}

/// The log filter: `DRCTL_LOG` when set, else by `-v`. Whatever either
/// says, the Kubernetes client logs at info at most: at debug it logs
/// refusals in full, and a refusal about a Secret may quote its data.
fn log_filter(verbose: u8, env: Option<&str>) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = env
        .and_then(|e| EnvFilter::try_new(e).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    ["kube_client=info", "kube=info"]
        .into_iter()
        .fold(filter, |f, d| {
            f.add_directive(d.parse().expect("a valid directive"))
        })
}

/// Logs go to stderr: human-readable on a terminal, JSON lines otherwise (for
/// log collectors). stdout is reserved for command output.
fn init_logging(verbose: u8) {
    use std::io::IsTerminal;
    let filter = log_filter(verbose, std::env::var("DRCTL_LOG").ok().as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.with_target(false).init();
    } else {
        builder.json().init();
    }
}

#[cfg(test)]
mod tests {
    /// Even `DRCTL_LOG=trace` (or a directive naming the client) leaves
    /// the Kubernetes client's debug output, which may quote Secrets, off.
    #[test]
    fn no_filter_lets_the_kubernetes_client_log_refusals() {
        use std::sync::{Arc, Mutex};
        for env in [Some("trace"), Some("debug,kube_client=trace"), None] {
            let buf = Arc::new(Mutex::new(Vec::new()));
            let writer = {
                let buf = buf.clone();
                move || SharedBuf(buf.clone())
            };
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(super::log_filter(2, env))
                .with_writer(writer)
                .finish();
            tracing::subscriber::with_default(subscriber, || {
                tracing::debug!(target: "kube_client::client", "refused: PLANTED-SECRET");
                tracing::debug!(target: "drctl::restore", "a drctl debug line");
            });
            let out = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
            assert!(!out.contains("PLANTED-SECRET"), "{env:?}: {out}");
            assert!(out.contains("a drctl debug line"), "{env:?}: {out}");
        }
    }

    struct SharedBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for SharedBuf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
