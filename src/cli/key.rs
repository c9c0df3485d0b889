use std::path::PathBuf;

use clap::Subcommand;

use super::Out;
use crate::error::Result;

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Generate an age identity (private key file, mode 0600) and print its
    /// recipient (public key) for `encryption.recipients`.
    Generate {
        /// Where to write the identity. An existing file is never overwritten.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

impl KeyCommand {
    pub(crate) fn run(self, out: &Out) -> Result<()> {
        match self {
            KeyCommand::Generate { file } => {
                let key = crate::keys::generate(&file)?;
                out.emit(&key, || {
                    format!(
                        "identity written to {} (keep it offline or with restore runs only)\n\
                         recipient: {}\n",
                        key.identity_file, key.recipient
                    )
                });
                Ok(())
            }
        }
    }
}
