//! Progress on a terminal (indicatif); nothing when stderr is not one, where
//! the structured logs say what happened instead.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A byte counter: a bar when `total` is known, a spinner otherwise.
pub(crate) fn bytes(total: Option<u64>, verb: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(t) => ProgressBar::new(t).with_style(
            ProgressStyle::with_template(&format!(
                "{{bar:40}} {{bytes}}/{{total_bytes}} {verb} ({{bytes_per_sec}}, eta {{eta}})"
            ))
            .expect("valid template"),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template(&format!(
                "{{spinner}} {{bytes}} {verb} ({{bytes_per_sec}})"
            ))
            .expect("valid template"),
        ),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// A counter of `total` things (objects, packs).
pub(crate) fn count(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {what} (eta {{eta}})"))
            .expect("valid template"),
    );
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar
}

/// A counter of things whose total is not known yet.
pub(crate) fn counter(what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template(&format!("{{spinner}} {{pos}} {what} ({{per_sec}})"))
            .expect("valid template"),
    );
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// `1.5 GiB`-style sizes for summaries.
pub(crate) fn human(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}
