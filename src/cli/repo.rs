use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use clap::Subcommand;

use super::{Context, Out};
use crate::error::{Error, ErrorKind, Result};
use crate::repo::{Recipients, Repository, read_config};

#[derive(Debug, Subcommand)]
pub(crate) enum RepoCommand {
    /// Create the repository: its config and its secret, encrypted to the
    /// recipients. Never overwrites an existing repository.
    Init {
        /// Also write the repository secret here (mode 0600) for writers that
        /// do not hold the identity; default: encryption.repository_secret_file
        /// when it is set and does not exist yet.
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
        /// Create the S3 bucket, with Object Lock and versioning, when it does
        /// not exist.
        #[arg(long)]
        create_bucket: bool,
    },
    /// Show the repository's format, chunker and recipients.
    Info,
}

impl RepoCommand {
    pub(crate) fn run(self, ctx: &Context, out: &Out) -> Result<()> {
        let loaded = ctx.load_config()?;
        let store = match (&self, loaded.config.repository.backend()) {
            // A bucket is checked before anything is written to it.
            (RepoCommand::Init { create_bucket, .. }, crate::config::Repository::S3(s3)) => {
                let store = crate::store::s3::S3Store::connect(s3)?;
                store.check_bucket(*create_bucket)?;
                std::sync::Arc::new(store) as std::sync::Arc<dyn crate::store::Store>
            }
            (
                RepoCommand::Init {
                    create_bucket: true,
                    ..
                },
                _,
            ) => {
                return Err(Error::config(
                    "--create-bucket is for a repository in S3 (repository.s3)",
                )
                .with_guidance("a local repository's directory is created as needed"));
            }
            _ => super::open_store(&loaded.config)?,
        };
        match self {
            RepoCommand::Init { secret_file, .. } => {
                let recipients = Recipients::parse(&loaded.config.encryption.recipients)?;
                let secret_file = secret_file.or_else(|| {
                    loaded
                        .config
                        .encryption
                        .repository_secret_file
                        .clone()
                        .filter(|p| !p.exists())
                });
                if let Some(p) = &secret_file
                    && p.exists()
                {
                    return Err(Error::config(format!("{} exists already", p.display()))
                        .with_guidance("choose a new path for the repository secret"));
                }
                let repo = Repository::init(store, recipients)?;
                if let Some(p) = &secret_file {
                    write_secret(p, &repo.secret.to_json())?;
                }
                out.emit(
                    &serde_json::json!({
                        "repository": repo.config,
                        "location": repo.store.location(),
                        "secret_fingerprint": repo.secret.fingerprint(),
                        "secret_file": secret_file.as_ref().map(|p| p.display().to_string()),
                    }),
                    || {
                        let mut t = format!(
                            "created repository {} at {}\nsecret fingerprint {} \
                             (pin readers to it: encryption.repository_fingerprint)\n",
                            repo.config.id,
                            repo.store.location(),
                            repo.secret.fingerprint()
                        );
                        if let Some(p) = &secret_file {
                            t.push_str(&format!(
                                "repository secret written to {} (give it to writers as a Kubernetes Secret)\n",
                                p.display()
                            ));
                        }
                        t
                    },
                );
            }
            RepoCommand::Info => {
                let (config, _) = read_config(&*store)?;
                // The fingerprint needs the secret: from its file, or
                // decrypted with the identity. Opening checks the config
                // against it (and against a pin), so a replaced config or
                // secret shows here too.
                let enc = &loaded.config.encryption;
                let fingerprint = if enc.repository_secret_file.is_some()
                    || ctx.identity.is_some()
                    || enc.identity_file.is_some()
                {
                    let write = ctx.identity.is_none() && enc.identity_file.is_none();
                    let repo = super::open_repo(&loaded.config, ctx.identity.as_deref(), write)?;
                    Some(repo.secret.fingerprint())
                } else {
                    None
                };
                out.emit(
                    &serde_json::json!({
                        "repository": config,
                        "location": store.location(),
                        "secret_fingerprint": fingerprint,
                    }),
                    || {
                        format!(
                            "repository {}\nlocation   {}\nformat     {}\ncreated    {}\nchunker    {} min {} avg {} max {} (blocks: fixed {})\npacks      {} MiB\nrecipients {}\nsecret     {}\n",
                            config.id,
                            store.location(),
                            config.format_version,
                            config.created_at.to_rfc3339(),
                            config.chunker.algorithm,
                            config.chunker.min,
                            config.chunker.avg,
                            config.chunker.max,
                            config.chunker.block_chunk,
                            config.pack_size >> 20,
                            config.recipients.join(", "),
                            fingerprint.as_deref().unwrap_or(
                                "fingerprint unknown: needs the secret file or the identity"
                            )
                        )
                    },
                );
            }
        }
        Ok(())
    }
}

fn write_secret(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            Error::new(
                ErrorKind::Failed,
                format!("cannot create {}", path.display()),
            )
            .with_source(e)
        })?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| {
        let _ = std::fs::remove_file(path);
        Error::new(
            ErrorKind::Failed,
            format!("cannot write {}", path.display()),
        )
        .with_source(e)
    })
}
