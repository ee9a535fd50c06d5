//! Logging through `tracing`: to the journal (structured fields) when
//! systemd connected stderr to it, to stderr otherwise. `RUST_LOG` filters
//! (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The process name of workers.
pub const WORKER: &str = "vtestd-worker";

pub fn init(process: &str) {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // systemd sets JOURNAL_STREAM when stderr goes to the journal. Workers
    // never see it (their environment is cleared) and log to stderr, a pipe
    // the broker reads and relays.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        match tracing_journald::layer() {
            Ok(journal) => {
                let journal = journal.with_syslog_identifier(process.to_string());
                if tracing_subscriber::registry()
                    .with(journal.with_filter(filter()))
                    .try_init()
                    .is_ok()
                {
                    return;
                }
            }
            Err(e) => eprintln!("{process}: journald unavailable ({e}); logging to stderr"),
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if process == WORKER {
        // The broker relays each line with its own timestamp.
        let _ = builder.without_time().try_init();
    } else {
        let _ = builder.try_init();
    }
}

/// An error and all its sources, joined by ": ".
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
