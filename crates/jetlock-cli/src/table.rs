//! Plain-text tables for the human views (`--json` prints the data
//! instead).

use unicode_width::UnicodeWidthStr;

/// Prints `rows` under `header`, columns padded to their widest cell.
pub fn print(header: &[&str], rows: &[Vec<String>]) {
    for line in render(header, rows) {
        println!("{line}");
    }
}

/// The lines of the table. Widths are terminal columns, not chars: a CJK
/// character or an emoji takes two, a combining mark none.
fn render(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.width()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.width());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        cells
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w.saturating_sub(c.width()))))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut lines = vec![line(&mut header.iter().copied())];
    lines.extend(
        rows.iter()
            .map(|row| line(&mut row.iter().map(String::as_str))),
    );
    lines
}

/// `1234` ms as `1.2s`.
pub fn secs(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// A Unix-ms time as RFC 3339 UTC with milliseconds.
pub fn time(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use unicode_width::UnicodeWidthStr;

    #[test]
    fn wide_names_keep_the_next_column_aligned() {
        let rows = vec![
            vec!["account:42".to_owned(), "x1".to_owned()],
            vec!["口座:東京".to_owned(), "x2".to_owned()],
            vec!["order:🚀".to_owned(), "x3".to_owned()],
        ];
        let lines = render(&["NAME", "OWNER"], &rows);
        let column = |line: &str, cell: &str| line[..line.find(cell).unwrap()].width();
        assert_eq!(column(&lines[0], "OWNER"), 12, "{lines:#?}");
        for (line, cell) in lines[1..].iter().zip(["x1", "x2", "x3"]) {
            assert_eq!(column(line, cell), 12, "{lines:#?}");
        }
    }
}
