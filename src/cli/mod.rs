//! The `drctl` command line: parse, set up logging, run one command, map the
//! result to an exit code. Commands are thin: they load the config, call the
//! library and print; the work is done in the library so the server and the
//! tests use the same code.

mod catalog;
mod config;
mod key;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, DEFAULT_CONFIG_PATH, ENV_CONFIG, Loaded};
use crate::error::Result;
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

    /// Output format: text for people, json for scripts.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Text)]
    output: Format,

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
    /// Manage the PostgreSQL catalog schema.
    #[command(subcommand)]
    Catalog(catalog::CatalogCommand),
    /// Manage age keys.
    #[command(subcommand)]
    Key(key::KeyCommand),
}

/// Entry point of the `drctl` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let out = Out::new(cli.output);
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

async fn run(cli: Cli, out: &Out) -> Result<()> {
    let ctx = Context {
        config_path: cli.config,
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
        Command::Catalog(cmd) => cmd.run(&ctx, out).await,
        Command::Key(cmd) => cmd.run(out),
    }
}

/// What every command may need from the global flags.
struct Context {
    config_path: Option<PathBuf>,
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
}

/// Logs go to stderr: human-readable on a terminal, JSON lines otherwise (for
/// log collectors). stdout is reserved for command output.
fn init_logging(verbose: u8) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_env("DRCTL_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.with_target(false).init();
    } else {
        builder.json().init();
    }
}
