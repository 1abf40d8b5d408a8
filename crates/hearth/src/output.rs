//! How the CLI shows things: tables for people, JSON for programs, and
//! errors with a hint.

// The table, its cells and JSON are the bench reports' too: one copy, in
// `hearth-bench`, which the CLI depends on for `hearth bench`.
pub(crate) use hearth_bench::output::{Table, cell, print_json};

/// Prints an error chain and, where there is one, what to do next.
pub(crate) fn print_error(error: &anyhow::Error) {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    eprintln!("error: {message}");
    let hint = error.chain().find_map(|e| e.downcast_ref::<hearth_client::Error>()).and_then(|e| e.hint());
    if let Some(hint) = hint {
        eprintln!("hint: {hint}");
    }
}

/// A spinner on stderr for a long wait; silent when stderr is not a terminal.
#[derive(Debug)]
pub(crate) struct Spinner(indicatif::ProgressBar);

impl Spinner {
    pub(crate) fn new(message: String) -> Self {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(message);
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        Self(bar)
    }

    pub(crate) fn set(&self, message: String) {
        self.0.set_message(message);
    }

    pub(crate) fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// A progress bar for a known amount of work (bytes), on stderr.
#[derive(Debug)]
pub(crate) struct Bar(indicatif::ProgressBar);

impl Bar {
    pub(crate) fn new() -> Self {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg:40!} {bar:30} {bytes:>10}/{total_bytes:<10}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        Self(bar)
    }

    pub(crate) fn update(&self, message: &str, done: Option<u64>, total: Option<u64>) {
        self.0.set_message(message.to_owned());
        if let Some(total) = total {
            self.0.set_length(total);
        }
        if let Some(done) = done {
            self.0.set_position(done);
        }
    }

    pub(crate) fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// The terminal in raw mode for an interactive session; restored on drop.
pub(crate) struct RawMode(nix::sys::termios::Termios);

impl RawMode {
    /// None if stdin is not a terminal.
    pub(crate) fn enable() -> Option<Self> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let saved = tcgetattr(std::io::stdin()).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(std::io::stdin(), SetArg::TCSANOW, &raw).ok()?;
        Some(Self(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &self.0);
    }
}

impl std::fmt::Debug for RawMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawMode")
    }
}
