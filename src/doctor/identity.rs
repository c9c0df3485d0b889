//! The age identity where it must be, and nowhere else.
//!
//! The identity decrypts every backup. The design keeps it out of
//! everything that runs on a schedule and writes (the server, the agents):
//! someone who takes those over can then destroy nothing (Object Lock) and
//! read nothing. The drill worker and restores need it, and then it must be
//! readable by them and by no other user.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Check, Options, Role, describe};
use crate::config::Loaded;

const NAME: &str = "identity";

pub(super) fn check(loaded: &Loaded, opts: &Options) -> Check {
    let (path, from) = match (&opts.identity, &loaded.config.encryption.identity_file) {
        (Some(p), _) => (Some(p.clone()), "--identity".to_string()),
        (None, Some(p)) => {
            let env = loaded
                .overrides
                .iter()
                .find(|(key, _)| key == "encryption.identity_file")
                .map(|(_, env)| format!("${env}"));
            (
                Some(p.clone()),
                env.unwrap_or_else(|| "encryption.identity_file".to_string()),
            )
        }
        (None, None) => (None, String::new()),
    };
    match opts.role {
        Role::Server | Role::Agent => must_not_hold(opts.role, path.as_deref(), &from),
        Role::Worker | Role::Restore => must_hold(opts.role, path, &from),
    }
}

/// A writer with an identity configured: whoever takes the process over
/// can decrypt every backup, which is what holding only recipients rules
/// out.
fn must_not_hold(role: Role, path: Option<&Path>, from: &str) -> Check {
    let who = match role {
        Role::Server => "drctl server",
        _ => "drctl agent",
    };
    match path {
        None => Check::pass(
            NAME,
            format!(
                "no age identity configured: {who} holds only the recipients and the \
                 repository secret, and cannot decrypt a backup"
            ),
        ),
        Some(p) => Check::fail(
            NAME,
            format!(
                "an age identity is configured ({from}: {}): {who} would hold the key that \
                 decrypts every backup",
                p.display()
            ),
            format!(
                "{}: only the drill worker and restore hosts hold the identity",
                match from {
                    "--identity" => "drop --identity".to_string(),
                    "encryption.identity_file" =>
                        format!("remove encryption.identity_file from {who}'s configuration"),
                    env => format!(
                        "unset {} in {who}'s environment",
                        env.trim_start_matches('$')
                    ),
                }
            ),
        ),
    }
}

/// A reader must have the identity, able to open it, and alone.
fn must_hold(role: Role, path: Option<PathBuf>, from: &str) -> Check {
    let Some(path) = path else {
        return Check::fail(
            NAME,
            format!(
                "no age identity configured; {} decrypts backups and needs it",
                match role {
                    Role::Worker => "the drill worker",
                    _ => "a restore",
                }
            ),
            match role {
                Role::Worker => {
                    "set DRCTL_IDENTITY_FILE to the mounted identity (Secret drctl-identity) \
                     or encryption.identity_file"
                }
                _ => "pass --identity FILE, or set DRCTL_IDENTITY_FILE or encryption.identity_file",
            },
        );
    };
    let shown = path.display();
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) => {
            return Check::fail(
                NAME,
                format!("cannot read the identity {shown} ({from}): {e}"),
                format!("point {from} at the file `drctl key generate` wrote"),
            );
        }
    };
    if !meta.is_file() {
        return Check::fail(
            NAME,
            format!("the identity {shown} ({from}) is not a regular file"),
            format!("point {from} at the file `drctl key generate` wrote"),
        );
    }
    let mode = meta.permissions().mode() & 0o777;
    let loose = exposure(mode, meta.gid(), &own_groups());
    if let Some(Exposure::Others(who)) = &loose {
        return Check::fail(
            NAME,
            format!(
                "the identity {shown} can be read by {who} (mode {mode:o}): it decrypts every backup"
            ),
            format!("chmod 600 {shown}"),
        );
    }
    // Reading it proves it is readable here and holds an identity; the
    // key itself is never shown.
    if let Err(e) = crate::repo::Identity::from_file(&path) {
        return Check::fail(
            NAME,
            format!("{} ({from})", describe(&e)),
            e.guidance()
                .unwrap_or("pass the file `drctl key generate` wrote")
                .to_string(),
        );
    }
    match loose {
        Some(Exposure::OwnGroup(gid)) => Check::warn(
            NAME,
            format!(
                "the identity {shown} ({from}) is readable, and readable by group {gid} \
                 (mode {mode:o}), a group this process is in: as a Secret volume with \
                 defaultMode 0440 and fsGroup gives it; on a shared machine, other members \
                 of the group can read it"
            ),
            format!("if other users share group {gid}: chmod 600 {shown}"),
        ),
        _ => Check::pass(
            NAME,
            format!(
                "the identity {shown} ({from}) is readable here and by no other user (mode {mode:o})"
            ),
        ),
    }
}

/// Who besides the owner can read a file.
#[derive(Debug, PartialEq, Eq)]
enum Exposure {
    /// Every user, or a group this process is not in: a failure.
    Others(String),
    /// A group this process is in (its own group, or a pod's fsGroup): how
    /// Kubernetes lets a non-root container read a Secret volume.
    OwnGroup(u32),
}

fn exposure(mode: u32, gid: u32, own_groups: &[u32]) -> Option<Exposure> {
    if mode & 0o007 != 0 {
        return Some(Exposure::Others("every user".into()));
    }
    if mode & 0o070 == 0 {
        return None;
    }
    if own_groups.contains(&gid) {
        Some(Exposure::OwnGroup(gid))
    } else {
        Some(Exposure::Others(format!("group {gid}")))
    }
}

/// The effective and supplementary groups of this process (Linux:
/// /proc/self/status), without unsafe code. Empty when unreadable, which
/// makes any group-readable file a failure.
fn own_groups() -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return Vec::new();
    };
    let mut groups = Vec::new();
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("Gid:") {
            // real, effective, saved, file system: the effective one.
            groups.extend(
                rest.split_whitespace()
                    .nth(1)
                    .and_then(|g| g.parse::<u32>().ok()),
            );
        } else if let Some(rest) = line.strip_prefix("Groups:") {
            groups.extend(
                rest.split_whitespace()
                    .filter_map(|g| g.parse::<u32>().ok()),
            );
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_can_read_an_identity() {
        assert_eq!(exposure(0o600, 1000, &[1000]), None);
        assert_eq!(exposure(0o400, 0, &[]), None);
        assert_eq!(
            exposure(0o644, 1000, &[1000]),
            Some(Exposure::Others("every user".into()))
        );
        assert_eq!(
            exposure(0o640, 50, &[1000]),
            Some(Exposure::Others("group 50".into()))
        );
        // A Secret volume: root-owned, defaultMode 0440, the pod's fsGroup.
        assert_eq!(
            exposure(0o440, 65532, &[65532]),
            Some(Exposure::OwnGroup(65532))
        );
    }

    #[test]
    fn this_process_has_groups() {
        assert!(!own_groups().is_empty());
    }
}
