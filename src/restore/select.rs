//! `--include`: which paths of a volume backup a partial restore takes.
//!
//! A pattern is a path from the backup's root (`data/base/16384`) or a glob
//! (`logs/**/*.gz`; `*` and `?` stay within one path component, `**`
//! crosses them). A path taken brings everything beneath it, and the
//! directories above it are created so it has somewhere to go. Only the
//! directories a pattern can reach are read from the backup: restoring one
//! file reads the trees on its path, not the listing of a million files.

use globset::{Glob, GlobBuilder, GlobMatcher};

use crate::error::{Error, Result};
use crate::repo::tree::Select;

/// Patterns as given to `--include`.
pub struct Patterns {
    patterns: Vec<Pattern>,
}

struct Pattern {
    /// The components before the first one with a glob character.
    literal: String,
    /// `None` for a plain path (it is `literal`).
    glob: Option<GlobMatcher>,
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

impl Patterns {
    pub fn new(given: &[String]) -> Result<Patterns> {
        let mut patterns = Vec::new();
        for g in given {
            let clean: Vec<&str> = g
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .collect();
            if clean.is_empty() || clean.contains(&"..") {
                return Err(Error::config(format!(
                    "--include {g:?}: not a path inside the backup"
                ))
                .with_guidance(
                    "give a path from the backup's root, like data/base or 'logs/**/*.gz'; \
                     list them with `drctl backup ls BACKUP`",
                ));
            }
            let path = clean.join("/");
            let literal = clean
                .iter()
                .take_while(|c| !has_glob(c))
                .copied()
                .collect::<Vec<_>>()
                .join("/");
            let glob = if has_glob(&path) {
                let glob: Glob = GlobBuilder::new(&path)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| {
                        Error::config(format!("--include {g:?} is not a valid glob: {e}"))
                    })?;
                Some(glob.compile_matcher())
            } else {
                None
            };
            patterns.push(Pattern { literal, glob });
        }
        Ok(Patterns { patterns })
    }
}

/// Whether `path` is `prefix` or beneath it.
fn within(path: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

impl Select for Patterns {
    fn takes(&self, path: &str) -> bool {
        self.patterns.iter().any(|p| match &p.glob {
            None => path == p.literal,
            Some(g) => g.is_match(path),
        })
    }

    fn may_take_beneath(&self, dir: &str) -> bool {
        self.patterns.iter().any(|p| {
            // On the way down to the literal part, or inside it (where a
            // glob may match at any depth).
            within(&p.literal, dir) || (p.glob.is_some() && within(dir, &p.literal))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(list: &[&str]) -> Patterns {
        Patterns::new(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn a_plain_path_takes_itself_and_reads_only_the_directories_above_it() {
        let s = p(&["/data/base/16384/"]);
        assert!(s.takes("data/base/16384"));
        assert!(!s.takes("data/base/1638"));
        assert!(!s.takes("data/base"));
        assert!(s.may_take_beneath("data"));
        assert!(s.may_take_beneath("data/base"));
        assert!(!s.may_take_beneath("dat"));
        assert!(!s.may_take_beneath("logs"));
        assert!(!s.may_take_beneath("data/base/1638"));
    }

    #[test]
    fn a_glob_star_stays_in_its_component_and_double_star_crosses() {
        let s = p(&["logs/*.gz"]);
        assert!(s.takes("logs/a.gz"));
        assert!(!s.takes("logs/x/a.gz"));
        let s = p(&["logs/**/*.gz"]);
        assert!(s.takes("logs/x/y/a.gz"));
        assert!(s.may_take_beneath("logs/x"));
        assert!(!s.may_take_beneath("data"));
    }

    #[test]
    fn a_pattern_outside_the_backup_is_refused() {
        for bad in ["..", "../etc", "/", "a/../../b"] {
            assert!(Patterns::new(&[bad.to_string()]).is_err(), "{bad} accepted");
        }
    }
}
