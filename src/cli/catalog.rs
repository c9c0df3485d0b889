use std::sync::{Arc, Mutex};

use clap::Subcommand;

use super::{Context, Out};
use crate::catalog::MigrationState;
use crate::config::Loaded;
use crate::error::{Error, ErrorKind, Result};
use crate::rebuild::{Report, Step};

#[derive(Debug, Subcommand)]
pub(crate) enum CatalogCommand {
    /// Apply pending schema migrations (safe to run repeatedly and concurrently).
    Migrate,
    /// Show which schema migrations the catalog has.
    Status,
    /// Rebuild the catalog of the configured repository from the bucket alone,
    /// after the catalog database was lost. Needs the age identity. Adds what
    /// the catalog lacks and never changes what it has, so it is safe to run
    /// again. Manifests and packs that fail verification are listed and left
    /// out (exit code 8).
    Rebuild,
}

impl CatalogCommand {
    pub(crate) async fn run(self, ctx: &Context, out: &Out) -> Result<()> {
        let loaded = ctx.load_config()?;
        match self {
            CatalogCommand::Migrate => {
                let catalog = Context::connect_catalog(&loaded).await?;
                let applied = catalog.migrate().await?;
                out.emit(&serde_json::json!({ "applied": applied }), || {
                    if applied.is_empty() {
                        "catalog schema is up to date; nothing to apply\n".to_string()
                    } else {
                        applied
                            .iter()
                            .map(|m| format!("applied {} {}\n", m.version, m.description))
                            .collect()
                    }
                });
            }
            CatalogCommand::Status => {
                let catalog = Context::connect_catalog(&loaded).await?;
                let states = catalog.status().await?;
                let pending = states.iter().filter(|m| !m.applied).count();
                out.emit(
                    &serde_json::json!({ "migrations": states, "pending": pending }),
                    || render_status(&states, pending),
                );
            }
            CatalogCommand::Rebuild => rebuild(ctx, &loaded, out).await?,
        }
        Ok(())
    }
}

fn render_status(states: &[MigrationState], pending: usize) -> String {
    let mut text: String = states
        .iter()
        .map(|m| {
            let mark = if m.applied { "applied" } else { "pending" };
            format!("{:>14}  {mark}  {}\n", m.version, m.description)
        })
        .collect();
    if pending > 0 {
        text.push_str(&format!("{pending} pending; run `drctl catalog migrate`\n"));
    }
    text
}

async fn rebuild(ctx: &Context, loaded: &Loaded, out: &Out) -> Result<()> {
    // The identity first: without it nothing in the bucket can be read, and
    // the catalog is not touched.
    let repo = Arc::new(super::open_repo(
        &loaded.config,
        ctx.identity.as_deref(),
        false,
    )?);
    let catalog = ctx.catalog(loaded).await?;
    let bar: Arc<Mutex<Option<indicatif::ProgressBar>>> = Arc::default();
    let b2 = bar.clone();
    let progress = Arc::new(move |step: Step| {
        let mut bar = b2.lock().unwrap();
        let (total, what) = match step {
            Step::Packs(total) => (total, "packs"),
            Step::Manifests(total) => (total, "manifests"),
            Step::Done => {
                if let Some(b) = bar.as_ref() {
                    b.inc(1);
                }
                return;
            }
        };
        if let Some(b) = bar.take() {
            b.finish_and_clear();
        }
        *bar = Some(super::progress::count(total, what));
    });
    let report = crate::rebuild::rebuild(repo, &catalog, progress).await;
    if let Some(b) = bar.lock().unwrap().take() {
        b.finish_and_clear();
    }
    let report = report?;
    out.emit(&report, || render_rebuild(&report));
    if !report.is_clean() {
        return Err(Error::new(
            ErrorKind::Partial,
            format!(
                "the catalog is rebuilt without {} manifest(s) and {} pack(s) that failed \
                 verification",
                report.rejected_manifests.len(),
                report.damaged_packs.len()
            ),
        )
        .with_guidance(
            "they are listed above and were not recorded. A manifest that fails \
             authentication was not written by this repository's writers: someone with write \
             access to the bucket may have planted it. `drctl verify --read-data` lists what \
             damaged packs affect",
        ));
    }
    Ok(())
}

fn render_rebuild(r: &Report) -> String {
    let mut t = format!(
        "rebuilt the catalog of repository {} at {}\n  backups  {} rebuilt, {} already in the catalog\n  items    {}\n  packs    {} ({} chunks, {} new)\n  objects  {} (config, keys, manifests)\n  time     {:.1}s\n",
        r.repository,
        r.location,
        r.backups_rebuilt,
        r.backups_present,
        r.items,
        r.packs,
        r.chunks,
        r.chunks_added,
        r.objects,
        r.seconds
    );
    for m in &r.rejected_manifests {
        t.push_str(&format!("REJECTED {}: {}\n", m.key, m.reason));
    }
    for p in &r.damaged_packs {
        t.push_str(&format!("DAMAGED {}: {}\n", p.key, p.reason));
    }
    for w in &r.warnings {
        t.push_str(&format!("warning: {w}\n"));
    }
    t
}
