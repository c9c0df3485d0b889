//! `drctl verify --storage`: the scrub an auditor can run.
//!
//! It needs neither the identity nor the repository secret (nothing is
//! decrypted), only read access to the bucket and the catalog: every object
//! the catalog records is checked against the store. The recorded version
//! must exist, with the recorded size and SHA-256, locked in the recorded
//! mode at least until the recorded date and at least as long as every
//! backup that needs it is kept; and no newer version may sit on top of it
//! (a versioned bucket lets anyone with write access add one; restores read
//! past it, but it means those credentials were used against the backups).

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
    pub problem: String,
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
        let mut problem = |p: String| {
            report.problems.push(Problem {
                key: o.key.clone(),
                problem: p,
            })
        };
        let meta = match &o.version_id {
            Some(v) => store.head_version(&o.key, v)?,
            None => store.head(&o.key)?,
        };
        let Some(meta) = meta else {
            problem(match &o.version_id {
                Some(v) => format!("missing: version {v} is not in the bucket"),
                None => "missing".into(),
            });
            progress(1);
            continue;
        };
        if meta.size != o.size as u64 {
            problem(format!("size {} where {} was stored", meta.size, o.size));
        }
        if let Some(mode) = &o.lock_mode {
            if meta.lock_mode.as_deref() != Some(mode.as_str()) {
                problem(format!(
                    "lock mode {} where {mode} was set",
                    meta.lock_mode.as_deref().unwrap_or("none")
                ));
            }
            let ends = meta.retain_until;
            let show =
                |t: Option<DateTime<Utc>>| t.map_or("never (no lock)".into(), |t| t.to_rfc3339());
            if let Some(recorded) = o.retain_until
                && ends.is_none_or(|e| e < recorded)
            {
                problem(format!(
                    "lock ends {}, earlier than the {} on record",
                    show(ends),
                    recorded.to_rfc3339()
                ));
            }
            if let Some(needed) = o.needed_until
                && ends.is_none_or(|e| e < needed)
            {
                problem(format!(
                    "lock ends {}, before the backups that need it expire ({})",
                    show(ends),
                    needed.to_rfc3339()
                ));
            }
        }
        let bytes = match &o.version_id {
            Some(v) => store.get_version(&o.key, v)?,
            None => store.get(&o.key)?,
        };
        report.bytes_read += bytes.len() as u64;
        if sha256(&bytes)[..] != o.sha256[..] {
            problem("content does not match the SHA-256 on record".into());
        }
        if let Some(recorded) = &o.version_id
            && let Some(newest) = store.versions(&o.key)?.into_iter().next()
            && newest.version_id.as_deref() != Some(recorded.as_str())
        {
            problem(format!(
                "a newer version ({}) was put over the recorded one: someone with write access \
                 to the bucket replaced this object (restores read the recorded version)",
                newest.version_id.as_deref().unwrap_or("?")
            ));
        }
        progress(1);
    }
    Ok(report)
}
