//! Result lines on stdout (logs go to stderr through `tracing`).

use std::fmt::Display;
use std::io::{ErrorKind, Write};

/// Prints one line to stdout. A closed pipe (`training ... | head`) ends the
/// program quietly instead of panicking.
pub fn line(text: impl Display) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush()) {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        tracing::error!("cannot write to stdout: {e}");
        std::process::exit(1);
    }
}
