//! How the CLI shows things: tables for people, JSON for programs, and
//! errors with a hint.

use std::fmt::Write as _;

/// A table with a header row, columns padded to their widest cell.
#[derive(Debug, Default)]
pub(crate) struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: Vec<&'static str>) -> Self {
        Self { header, rows: Vec::new() }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
            let mut text = String::new();
            for (i, cell) in cells.enumerate() {
                if i + 1 == columns {
                    text.push_str(cell);
                } else {
                    let _ = write!(text, "{cell:<width$}   ", width = widths[i]);
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&mut out, &mut self.header.iter().copied());
        for row in &self.rows {
            line(&mut out, &mut row.iter().map(String::as_str));
        }
        out
    }
}

/// Prints a value as pretty JSON.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Shortens a value for a table cell, on one line.
pub(crate) fn cell(text: &str, max: usize) -> String {
    let one_line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if one_line.chars().count() <= max {
        one_line
    } else {
        let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_columns_and_trims_line_ends() {
        let mut table = Table::new(vec!["KEY", "VALUE"]);
        table.row(vec!["a".into(), "1".into()]);
        table.row(vec!["longer".into(), "".into()]);
        assert_eq!(table.render(), "KEY      VALUE\na        1\nlonger\n");
    }

    #[test]
    fn cells_are_one_line_and_bounded() {
        assert_eq!(cell("a\nb", 10), "a b");
        assert_eq!(cell("abcdef", 4), "abc…");
    }
}
