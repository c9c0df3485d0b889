//! Backup references: what a person types to name a backup.
//!
//! A backup's id is a UUIDv7, and every backup of the same minute shares its
//! first 13 characters (they are the time), so a "unique prefix" is about 14
//! characters long. The *short id* is the other end instead: the last 8 hex
//! digits, which are random (as `git` abbreviates hashes). `backup list`
//! shows it; a reference may be:
//!
//! - the full id;
//! - any run of at least 4 hex digits the id starts or ends with (dashes
//!   optional), the short id being the usual one;
//! - `NAME@latest`: the newest usable backup named NAME (catalog only);
//! - `NAME@TIME`: the newest usable backup named NAME started at or before
//!   TIME, in UTC: `2026-12-01T10:00`, with seconds and a `Z` optional, or a
//!   day alone (`2026-12-01`: the last backup of that day). What the volume
//!   looked like then, without looking up an id (catalog only).
//!
//! A reference that matches several backups is an error listing them.

use uuid::Uuid;

use crate::error::{Error, ErrorKind, Result};

/// Hex digits in a short id.
pub const SHORT_LEN: usize = 8;
/// The fewest hex digits a partial reference may have.
const MIN_LEN: usize = 4;
/// Candidates an ambiguity error lists.
pub const SHOWN: usize = 10;

/// The short id of `id`: its last 8 hex digits.
pub fn short(id: &Uuid) -> String {
    let hex = id.simple().to_string();
    hex[hex.len() - SHORT_LEN..].to_string()
}

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Id(Uuid),
    /// Lower-case hex digits, no dashes: matches ids that start or end
    /// with them.
    Partial(String),
    /// The newest usable backup named so.
    Latest(String),
    /// The newest usable backup named so, started at or before the time.
    At(String, chrono::DateTime<chrono::Utc>),
}

/// `2026-12-01T10:00[:00][Z]` or `2026-12-01` (its last second), in UTC.
fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::{NaiveDate, NaiveDateTime};
    let s = s.strip_suffix('Z').unwrap_or(s);
    for f in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(23, 59, 59))
        .map(|t| t.and_utc())
}

impl Reference {
    /// Parses what a person typed; an error says what a reference looks
    /// like. Checked before it goes near SQL.
    pub fn parse(given: &str) -> Result<Reference> {
        if let Some(name) = given.strip_suffix("@latest") {
            if name.is_empty() {
                return Err(bad(given));
            }
            return Ok(Reference::Latest(name.to_string()));
        }
        if let Some((name, time)) = given.rsplit_once('@') {
            let at = parse_time(time)
                .filter(|_| !name.is_empty())
                .ok_or_else(|| {
                    bad(given).with_guidance(
                    "NAME@latest, or NAME@TIME with TIME in UTC as 2026-12-01T10:00 or 2026-12-01",
                )
                })?;
            return Ok(Reference::At(name.to_string(), at));
        }
        if let Ok(id) = given.parse::<Uuid>() {
            return Ok(Reference::Id(id));
        }
        let hex: String = given.chars().filter(|c| *c != '-').collect();
        if hex.len() < MIN_LEN || hex.len() > 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad(given));
        }
        Ok(Reference::Partial(hex.to_ascii_lowercase()))
    }

    /// Whether `id` is what this reference names (`Latest` never matches
    /// an id by itself: its resolution needs the catalog).
    pub fn matches(&self, id: &Uuid) -> bool {
        match self {
            Reference::Id(i) => i == id,
            Reference::Partial(hex) => {
                let full = id.simple().to_string();
                full.starts_with(hex.as_str()) || full.ends_with(hex.as_str())
            }
            Reference::Latest(_) | Reference::At(..) => false,
        }
    }

    /// The one backup among `candidates` (each with a line describing it)
    /// that this reference names, or an error naming it as missing from
    /// `place` or listing the candidates it could mean.
    pub fn pick(&self, given: &str, candidates: Vec<(Uuid, String)>, place: &str) -> Result<Uuid> {
        match candidates.len() {
            1 => Ok(candidates[0].0),
            0 => Err(Error::new(
                ErrorKind::NotFound,
                format!("no backup `{given}` in {place}"),
            )
            .with_guidance(
                "`drctl backup list` shows the backups (`--from-bucket` when the catalog is down)",
            )),
            n => {
                let mut listed: Vec<String> = candidates
                    .iter()
                    .take(SHOWN)
                    .map(|(id, what)| format!("{id}  {what}"))
                    .collect();
                if n > SHOWN {
                    listed.push(format!("… and {} more", n - SHOWN));
                }
                Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "`{given}` could mean {n} backups:\n  {}",
                        listed.join("\n  ")
                    ),
                )
                .with_guidance("give the full id, or more of its digits"))
            }
        }
    }
}

fn bad(given: &str) -> Error {
    Error::new(
        ErrorKind::Config,
        format!("`{given}` is not a backup reference"),
    )
    .with_guidance(
        "give a backup id, its short id (the last 8 hex digits, as `drctl backup list` shows), \
         at least 4 of its first or last hex digits, NAME@latest, or NAME@2026-12-01T10:00 \
         (the newest backup at that time, UTC)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_are_the_random_tail_and_match_alone() {
        let a: Uuid = "01a2b3c4-d5e6-7f00-8123-456789abcdef".parse().unwrap();
        let b: Uuid = "01a2b3c4-d5e6-7f00-8123-456700000000".parse().unwrap();
        assert_eq!(short(&a), "89abcdef");
        let r = Reference::parse("89abcdef").unwrap();
        assert!(r.matches(&a) && !r.matches(&b));
        // Prefixes still work, with or without dashes.
        for p in ["01a2b3c4-d5e6", "01a2b3c4d5e6", "01A2"] {
            let r = Reference::parse(p).unwrap();
            assert!(r.matches(&a) && r.matches(&b), "{p}");
        }
        assert_eq!(
            Reference::parse("web@latest").unwrap(),
            Reference::Latest("web".into())
        );
        assert_eq!(Reference::parse(&a.to_string()).unwrap(), Reference::Id(a));
    }

    #[test]
    fn name_at_a_time_takes_minutes_seconds_or_a_whole_day() {
        let at = |s: &str| match Reference::parse(s).unwrap() {
            Reference::At(n, t) => (n, t.to_rfc3339()),
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(
            at("db@2026-12-01T10:00"),
            ("db".into(), "2026-12-01T10:00:00+00:00".into())
        );
        assert_eq!(at("db@2026-12-01T10:00:30Z").1, "2026-12-01T10:00:30+00:00");
        assert_eq!(at("db@2026-12-01").1, "2026-12-01T23:59:59+00:00");
        assert_eq!(at("a@b@2026-12-01").0, "a@b");
        for bad in ["db@yesterday", "@2026-12-01", "db@2026-13-01"] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn what_is_not_a_reference_never_reaches_a_query() {
        for bad in [
            "%",
            "_",
            "abc",
            "zzzzzzzz",
            "@latest",
            "0123456789abcdef0123456789abcdef0",
        ] {
            let e = Reference::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{bad}");
        }
    }

    #[test]
    fn an_ambiguous_reference_lists_the_candidates() {
        let r = Reference::parse("0000").unwrap();
        let ids: Vec<(Uuid, String)> = (0..12)
            .map(|i| (Uuid::from_u128(i), format!("volume web #{i}")))
            .collect();
        let e = r.pick("0000", ids, "the catalog").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("could mean 12 backups"), "{text}");
        assert!(text.contains("volume web #9"), "{text}");
        assert!(text.contains("and 2 more"), "{text}");
    }
}
