//! `drctl verify --storage`: the scrub an auditor can run.
//!
//! It needs neither the identity nor the repository secret (nothing is
//! decrypted), only read access to the bucket and the catalog: every object
//! the catalog records is checked against the store. The recorded version
//! must exist, with the recorded size and SHA-256, locked in the recorded
//! mode at least until the recorded date and at least as long as every
//! backup that needs it is kept; it must be the key's original (oldest)
//! version, and nothing may sit on top of it: neither a later version nor a
//! delete marker. A versioned bucket lets anyone with write access add
//! either; readers never use them, but each means those credentials were
//! used against the backups, so each is a finding.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::Result;
use crate::store::{Store, sha256};

/// An object as the catalog records it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Recorded {
    pub key: String,
    pub size: i64,
    pub sha256: Vec<u8>,
    pub version_id: Option<String>,
    pub lock_mode: Option<String>,
    pub retain_until: Option<DateTime<Utc>>,
    /// The latest retain-until of the usable backups that need the object.
    pub needed_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Default, Serialize)]
pub struct StorageReport {
    pub objects: u64,
    pub bytes_read: u64,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Serialize)]
pub struct Problem {
    pub key: String,
    /// `missing`, `size`, `lock`, `checksum`, `not_original`,
    /// `extra_version` or `delete_marker`.
    pub kind: &'static str,
    pub problem: String,
}

/// What a later version of `key` means, said for people.
fn replaced(key: &str) -> &'static str {
    if key == crate::repo::SECRET_KEY {
        "someone with write access to the bucket tried to replace the repository secret \
         (readers use the original; rotate the writers' credentials)"
    } else if key == crate::repo::CONFIG_KEY {
        "someone with write access to the bucket tried to replace the repository config \
         (readers use the original; rotate the writers' credentials)"
    } else if key.starts_with("manifests/") {
        "someone with write access to the bucket tried to replace this backup's manifest \
         (restores read the original; rotate the writers' credentials)"
    } else {
        "someone with write access to the bucket put other bytes under this key \
         (restores read the original; rotate the writers' credentials)"
    }
}

impl StorageReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks every recorded object; `progress` is told of each one checked.
pub fn verify_storage(
    store: &dyn Store,
    objects: &[Recorded],
    progress: &dyn Fn(u64),
) -> Result<StorageReport> {
    let mut report = StorageReport::default();
    for o in objects {
        report.objects += 1;
        let mut problem = |kind: &'static str, p: String| {
            report.problems.push(Problem {
                key: o.key.clone(),
                kind,
                problem: p,
            })
        };
        let versions = store.versions(&o.key)?;
        let original = versions.iter().find(|v| !v.delete_marker);
        if let (Some(recorded), Some(original)) = (&o.version_id, original)
            && original.meta.version_id.as_deref() != Some(recorded.as_str())
        {
            problem(
                "not_original",
                format!(
                    "the catalog records version {recorded}, but the original is {}: the \
                     catalog was changed or recorded a replacement (readers use the original)",
                    original.meta.version_id.as_deref().unwrap_or("?")
                ),
            );
        }
        for v in &versions {
            let id = v.meta.version_id.as_deref().unwrap_or("?");
            if v.delete_marker {
                problem(
                    "delete_marker",
                    format!(
                        "a delete marker ({id}) hides this object: someone with write access to \
                         the bucket deleted it; the locked original is intact and drctl reads \
                         it, but other tools see no object until the marker is removed \
                         (aws s3api delete-object --key KEY --version-id {id})"
                    ),
                );
            } else if original.is_some_and(|o| !std::ptr::eq(o, v)) {
                problem(
                    "extra_version",
                    format!(
                        "a new version ({id}) was written after creation: {}",
                        replaced(&o.key)
                    ),
                );
            }
        }
        let meta = store.head_version(&o.key, o.version_id.as_deref())?;
        let Some(meta) = meta else {
            problem(
                "missing",
                match &o.version_id {
                    Some(v) => format!("missing: version {v} is not in the bucket"),
                    None => "missing".into(),
                },
            );
            progress(1);
            continue;
        };
        if meta.size != o.size as u64 {
            problem(
                "size",
                format!("size {} where {} was stored", meta.size, o.size),
            );
        }
        if let Some(mode) = &o.lock_mode {
            if meta.lock_mode.as_deref() != Some(mode.as_str()) {
                problem(
                    "lock",
                    format!(
                        "lock mode {} where {mode} was set",
                        meta.lock_mode.as_deref().unwrap_or("none")
                    ),
                );
            }
            let ends = meta.retain_until;
            let show =
                |t: Option<DateTime<Utc>>| t.map_or("never (no lock)".into(), |t| t.to_rfc3339());
            if let Some(recorded) = o.retain_until
                && ends.is_none_or(|e| e < recorded)
            {
                problem(
                    "lock",
                    format!(
                        "lock ends {}, earlier than the {} on record",
                        show(ends),
                        recorded.to_rfc3339()
                    ),
                );
            }
            if let Some(needed) = o.needed_until
                && ends.is_none_or(|e| e < needed)
            {
                problem(
                    "lock",
                    format!(
                        "lock ends {}, before the backups that need it expire ({})",
                        show(ends),
                        needed.to_rfc3339()
                    ),
                );
            }
        }
        // Never more than was recorded: a larger version is a finding, not
        // a download.
        let bytes = store.read(&o.key, o.version_id.as_deref(), o.size.max(0) as u64);
        match bytes {
            Ok(bytes) => {
                report.bytes_read += bytes.len() as u64;
                if sha256(&bytes)[..] != o.sha256[..] {
                    problem(
                        "checksum",
                        "content does not match the SHA-256 on record".into(),
                    );
                }
            }
            Err(e) if e.kind() == crate::error::ErrorKind::Integrity => {
                problem("checksum", e.what().to_string());
            }
            Err(e) => return Err(e),
        }
        progress(1);
    }
    Ok(report)
}
