use clap::Args;

use super::{Context, Out};
use crate::error::{Error, ErrorKind, Result};

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// Verify only this backup (id or unique prefix); default: all.
    backup: Option<String>,
    /// Also download and check data: every pack, or PCT percent of them
    /// chosen at random (`--read-data=10`).
    #[arg(long, value_name = "PCT", num_args = 0..=1, default_missing_value = "100")]
    read_data: Option<String>,
}

impl VerifyArgs {
    pub(crate) fn run(self, ctx: &Context, out: &Out) -> Result<()> {
        let loaded = ctx.load_config()?;
        let share = match &self.read_data {
            None => None,
            Some(v) => {
                let pct: f64 = v
                    .trim_end_matches('%')
                    .parse()
                    .ok()
                    .filter(|p| *p > 0.0 && *p <= 100.0)
                    .ok_or_else(|| {
                        Error::config(format!("--read-data={v} is not a percentage"))
                            .with_guidance("give 1 to 100, e.g. --read-data=10")
                    })?;
                Some(pct / 100.0)
            }
        };
        let repo = super::open_repo(&loaded.config, ctx.identity.as_deref(), false)?;
        let ids = match &self.backup {
            Some(b) => vec![super::restore::resolve_backup(&repo, b)?],
            None => Vec::new(),
        };
        let report = crate::verify::verify(&repo, &ids, share)?;
        out.emit(&report, || {
            let mut t = format!(
                "checked {} backup(s), {} pack(s); read {} pack(s), {} chunk(s), {}\n",
                report.backups,
                report.packs,
                report.packs_read,
                report.chunks_checked,
                super::progress::human(report.bytes_read)
            );
            for m in &report.damaged_manifests {
                t.push_str(&format!(
                    "DAMAGED manifest of backup {}: {}\n",
                    m.backup, m.error
                ));
            }
            for p in &report.damaged_packs {
                t.push_str(&format!("DAMAGED {}: {}\n", p.pack, p.error));
                for (b, files) in &p.affected {
                    t.push_str(&format!("  affects backup {b}: {} file(s)\n", files.len()));
                    for f in files.iter().take(20) {
                        t.push_str(&format!("    {f}\n"));
                    }
                    if files.len() > 20 {
                        t.push_str(&format!("    … and {} more\n", files.len() - 20));
                    }
                }
            }
            if report.is_clean() {
                t.push_str("no damage found\n");
            }
            t
        });
        if !report.is_clean() {
            return Err(Error::new(
                ErrorKind::Integrity,
                format!(
                    "the repository is damaged: {} manifest(s), {} pack(s)",
                    report.damaged_manifests.len(),
                    report.damaged_packs.len()
                ),
            )
            .with_guidance("restores of the affected backups will fail for the listed files; take a new backup now"));
        }
        Ok(())
    }
}
