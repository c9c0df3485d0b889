use clap::Subcommand;

use super::{Context, Out};
use crate::catalog::{Catalog, MigrationState};
use crate::error::Result;

#[derive(Debug, Subcommand)]
pub(crate) enum CatalogCommand {
    /// Apply pending schema migrations (safe to run repeatedly and concurrently).
    Migrate,
    /// Show which schema migrations the catalog has.
    Status,
}

impl CatalogCommand {
    pub(crate) async fn run(self, ctx: &Context, out: &Out) -> Result<()> {
        let loaded = ctx.load_config()?;
        let catalog = Catalog::connect(loaded.config.catalog.url()).await?;
        match self {
            CatalogCommand::Migrate => {
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
                let states = catalog.status().await?;
                let pending = states.iter().filter(|m| !m.applied).count();
                out.emit(
                    &serde_json::json!({ "migrations": states, "pending": pending }),
                    || render_status(&states, pending),
                );
            }
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
