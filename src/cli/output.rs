//! Printing results: text for people, JSON (`-o json`) for scripts. Results go
//! to stdout, errors to stderr as text, or to stdout as JSON when scripts read.

use serde::Serialize;

use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    /// Markdown (`drill report`; other commands print text).
    Md,
    /// One self-contained HTML page (`drill report`; others print text).
    Html,
}

pub(crate) struct Out {
    format: Format,
    /// Whether a result was printed: stdout then holds one JSON document,
    /// and a final error (a partial backup, a damaged repository) goes to
    /// stderr so scripts still parse stdout and read the exit code.
    emitted: std::cell::Cell<bool>,
}

impl Out {
    pub(crate) fn new(format: Format) -> Self {
        Out {
            format,
            emitted: std::cell::Cell::new(false),
        }
    }

    /// Prints `value` as JSON, or the text `text` builds.
    pub(crate) fn emit<T: Serialize>(&self, value: &T, text: impl FnOnce() -> String) {
        self.emitted.set(true);
        match self.format {
            Format::Json => println!(
                "{}",
                serde_json::to_string_pretty(value).expect("output values serialise")
            ),
            Format::Text | Format::Md | Format::Html => print!("{}", text()),
        }
    }

    pub(crate) fn format(&self) -> Format {
        self.format
    }

    pub(crate) fn error(&self, err: &Error) {
        match self.format {
            Format::Json if !self.emitted.get() => println!(
                "{}",
                serde_json::to_string_pretty(&err.to_json()).expect("errors serialise")
            ),
            _ => eprint!("{}", err.report()),
        }
    }
}
