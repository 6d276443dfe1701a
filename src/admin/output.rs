//! Output helpers of the admin commands: aligned terminal tables and RFC 4180 CSV fields.
//!
//! Values come from DICOM headers a modality wrote; a table never passes a control character
//! (an escape sequence) to the terminal, a CSV field is quoted whenever it must be.

use std::borrow::Cow;
use std::io::Write;

/// A table printed with columns aligned on the widest cell.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Add a row (missing cells print empty; control characters are escaped).
    pub fn push(&mut self, cells: Vec<String>) {
        self.rows.push(
            cells
                .into_iter()
                .map(|c| printable(&c).into_owned())
                .collect(),
        );
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Write the header, a rule and the rows, two spaces between columns.
    pub fn write(&self, out: &mut dyn Write) -> std::io::Result<()> {
        self.write_indented(out, "")
    }

    /// [`Table::write`] with every line starting with `indent`.
    pub fn write_indented(&self, out: &mut dyn Write, indent: &str) -> std::io::Result<()> {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(n) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |cells: &[String], out: &mut dyn Write| -> std::io::Result<()> {
            let mut text = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = cells.get(i).map_or("", String::as_str);
                if i + 1 == n {
                    text.push_str(cell);
                } else {
                    let pad = w.saturating_sub(cell.chars().count());
                    text.push_str(cell);
                    text.extend(std::iter::repeat_n(' ', pad + 2));
                }
            }
            writeln!(out, "{indent}{}", text.trim_end())
        };
        line(&self.headers, out)?;
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        line(&rule, out)?;
        for row in &self.rows {
            line(row, out)?;
        }
        Ok(())
    }
}

/// `s` with every control character written as `\u{…}`, so that a header value cannot move
/// the cursor or change the terminal's state.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() {
                    format!("\\u{{{:x}}}", c as u32)
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// One CSV field (RFC 4180): quoted when it holds a comma, a quote, CR or LF, or starts or ends
/// with a space; quotes inside are doubled.
pub fn csv_field(s: &str) -> Cow<'_, str> {
    let needs = s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ');
    if needs {
        Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(s)
    }
}

/// Write one CSV record, LF-terminated.
pub fn csv_record<S: AsRef<str>>(out: &mut dyn Write, fields: &[S]) -> std::io::Result<()> {
    let line: Vec<Cow<'_, str>> = fields.iter().map(|f| csv_field(f.as_ref())).collect();
    writeln!(out, "{}", line.join(","))
}

/// A duration in seconds as `3d 4h`, `2h 5m`, `4m 10s` or `12s`.
pub fn human_age(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn csv_quotes_only_what_needs_it() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field(" padded"), "\" padded\"");
        assert_eq!(csv_field(""), "");
    }

    #[test]
    fn table_aligns_and_escapes_control_characters() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.push(vec!["wide cell".into(), "x".into()]);
        t.push(vec!["\u{1b}[2J".into(), "y".into()]);
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "A          LONGER");
        assert_eq!(lines[1], "---------  ------");
        assert_eq!(lines[2], "wide cell  x");
        assert_eq!(lines[3], "\\u{1b}[2J  y");
        assert!(!text.contains('\u{1b}'));
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(human_age(12.4), "12s");
        assert_eq!(human_age(250.0), "4m 10s");
        assert_eq!(human_age(7500.0), "2h 5m");
        assert_eq!(human_age(3.0 * 86_400.0 + 4.0 * 3600.0), "3d 4h");
        assert_eq!(human_age(-5.0), "0s");
    }
}
