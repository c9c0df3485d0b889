//! age keys: the identity (private) that decrypts backups, and the recipient
//! (public) that is all a writer needs.
//!
//! The split is the core of the threat model: whatever runs on a schedule in
//! the cluster holds only recipients, so an attacker who owns the cluster can
//! write new backups but cannot read old ones. The identity lives with restore
//! and drill runs, or offline.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use age::secrecy::ExposeSecret;

use crate::error::{Error, ErrorKind, Result};

/// A freshly generated key pair, written to disk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GeneratedKey {
    /// The public half (`age1…`), for `encryption.recipients`.
    pub recipient: String,
    /// Where the private half was written.
    pub identity_file: String,
}

/// Generates an age X25519 identity and writes it to `path` with mode 0600.
/// Refuses to overwrite: losing an identity loses every backup encrypted to it.
pub fn generate(path: &Path) -> Result<GeneratedKey> {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            let (kind, hint) = match e.kind() {
                std::io::ErrorKind::AlreadyExists => (
                    ErrorKind::Config,
                    "the file exists and is left untouched (it may be the only copy of a key); \
                     choose another path",
                ),
                std::io::ErrorKind::PermissionDenied => {
                    (ErrorKind::Permission, "choose a directory you can write to")
                }
                _ => (ErrorKind::Failed, "check that the directory exists"),
            };
            Error::new(
                kind,
                format!("cannot create identity file {}", path.display()),
            )
            .with_source(e)
            .with_guidance(hint)
        })?;
    let body = format!(
        "# created: {}\n# public key: {recipient}\n{}\n",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        identity.to_string().expose_secret()
    );
    file.write_all(body.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| {
            // A half-written identity must not be mistaken for a key later.
            let _ = std::fs::remove_file(path);
            Error::new(
                ErrorKind::Failed,
                format!("cannot write identity file {}", path.display()),
            )
            .with_source(e)
        })?;
    Ok(GeneratedKey {
        recipient,
        identity_file: path.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::str::FromStr;

    #[test]
    fn generated_identity_is_private_and_matches_recipient() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.txt");
        let key = generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .unwrap();
        let id = age::x25519::Identity::from_str(line).unwrap();
        assert_eq!(id.to_public().to_string(), key.recipient);
    }

    #[test]
    fn refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.txt");
        std::fs::write(&path, "precious").unwrap();
        let err = generate(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }
}
