//! The one error type of drctl's public API.
//!
//! Whoever reads a drctl error is usually an operator in the middle of an
//! incident, so every error says three things: what went wrong (`what`), why
//! (the `source` chain, from the library that failed), and what to do about it
//! (`guidance`). The [`ErrorKind`] decides the process exit code, so scripts can
//! tell "your input is wrong" from "a service is down, retry" from "the data did
//! not verify" without parsing text.
//!
//! Errors never carry secret values: code that builds one from user input uses
//! the redacted form (see [`crate::config::redact_url`]).

use std::fmt;
use std::process::ExitCode;

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What class of failure this is. Decides the exit code; see `docs/exit-codes.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// Something failed that is not one of the classes below.
    Failed,
    /// The configuration file, an environment override or a flag value is wrong.
    Config,
    /// A service drctl depends on (catalog, object store, etcd, API server) could
    /// not be reached or answered with a transient error. Retrying may help.
    Unavailable,
    /// Credentials were missing or refused, or a key does not decrypt.
    Permission,
    /// Stored data did not verify: a hash, a MAC or a format check failed.
    Integrity,
    /// A named thing (backup, repository, file) does not exist.
    NotFound,
    /// The operation finished, but not for everything it was asked to do.
    Partial,
}

impl ErrorKind {
    /// The process exit code for this kind (documented in `docs/exit-codes.md`).
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Failed => 1,
            // 2 is clap's code for a malformed command line.
            ErrorKind::Config => 3,
            ErrorKind::Unavailable => 4,
            ErrorKind::Permission => 5,
            ErrorKind::Integrity => 6,
            ErrorKind::NotFound => 7,
            ErrorKind::Partial => 8,
        }
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A drctl error: what went wrong, why, and what to do about it.
pub struct Error {
    kind: ErrorKind,
    what: String,
    guidance: Option<String>,
    source: Option<Source>,
}

impl Error {
    /// An error of `kind` described by `what` (a sentence fragment, lower case,
    /// no trailing period: it is printed after "error: ").
    pub fn new(kind: ErrorKind, what: impl Into<String>) -> Self {
        Error {
            kind,
            what: what.into(),
            guidance: None,
            source: None,
        }
    }

    /// A configuration error.
    pub fn config(what: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, what)
    }

    /// An I/O error on a named thing. Missing is `NotFound`, refused is
    /// `Permission`; anything else is `otherwise`.
    pub fn io(e: std::io::Error, otherwise: ErrorKind, what: impl Into<String>) -> Self {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                ErrorKind::Permission
            }
            _ => otherwise,
        };
        Error::new(kind, what).with_source(e)
    }

    /// Adds what the operator should do about it.
    pub fn with_guidance(mut self, guidance: impl Into<String>) -> Self {
        self.guidance = Some(guidance.into());
        self
    }

    /// Adds the underlying cause.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Says where the error happened, in front of what it says: `backup
    /// X failed: a catalog query failed`. Kind, causes and guidance stay.
    pub fn context(mut self, context: impl std::fmt::Display) -> Self {
        self.what = format!("{context}: {}", self.what);
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    pub fn guidance(&self) -> Option<&str> {
        self.guidance.as_deref()
    }

    /// The causes, outermost first, as text.
    pub fn causes(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut next = self.source.as_deref().map(|s| s as &dyn std::error::Error);
        while let Some(err) = next {
            let text = err.to_string();
            // Libraries often repeat their source in their own message; skip the echo.
            if !out.last().is_some_and(|l: &String| l.contains(&text)) {
                out.push(text);
            }
            next = err.source();
        }
        out
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.kind.exit_code())
    }

    /// A machine-readable form, for `-o json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "kind": self.kind,
                "exit_code": self.kind.exit_code(),
                "message": self.what,
                "causes": self.causes(),
                "guidance": self.guidance,
            }
        })
    }

    /// The form printed on a terminal: the message, its causes, then the hint.
    pub fn report(&self) -> String {
        let mut out = format!("error: {}\n", self.what);
        for cause in self.causes() {
            out.push_str(&format!("  caused by: {cause}\n"));
        }
        if let Some(g) = &self.guidance {
            out.push_str(&format!("  hint: {g}\n"));
        }
        out
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.report().trim_end())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lists_causes_and_guidance() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let err = Error::new(ErrorKind::Permission, "cannot read identity file /x")
            .with_source(io)
            .with_guidance("make it readable by the drctl user");
        assert_eq!(
            err.report(),
            "error: cannot read identity file /x\n  caused by: denied\n  hint: make it readable by the drctl user\n"
        );
        assert_eq!(err.kind().exit_code(), 5);
    }

    #[test]
    fn exit_codes_are_distinct() {
        let kinds = [
            ErrorKind::Failed,
            ErrorKind::Config,
            ErrorKind::Unavailable,
            ErrorKind::Permission,
            ErrorKind::Integrity,
            ErrorKind::NotFound,
            ErrorKind::Partial,
        ];
        let mut codes: Vec<u8> = kinds.iter().map(|k| k.exit_code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), kinds.len());
        assert!(!codes.contains(&0) && !codes.contains(&2));
    }
}
