//! Output of `keel ctl` in etcdctl's three formats: `simple` (comma-separated lines), `table`
//! (boxed, with a header row) and `json` (one object per command).

use clap::ValueEnum;

/// `-w, --write-out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WriteOut {
    /// One line per row, fields separated by ", ".
    Simple,
    /// A boxed table with a header row.
    Table,
    /// JSON.
    Json,
}

/// Prints rows in the simple or table format (callers print JSON themselves).
pub fn print_rows(format: WriteOut, headers: &[&str], rows: &[Vec<String>]) {
    match format {
        WriteOut::Table => print!("{}", table(headers, rows)),
        WriteOut::Simple | WriteOut::Json => {
            for row in rows {
                println!("{}", row.join(", "));
            }
        }
    }
}

/// A boxed table like etcdctl's (`+---+` borders, centered headers, right-aligned cells).
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| rows.iter().map(|r| r.get(i).map_or(0, String::len)).chain([headers[i].len()]).max().unwrap_or(0))
        .collect();
    let border: String = widths.iter().map(|w| format!("+{}", "-".repeat(w + 2))).collect::<String>() + "+\n";
    let mut out = border.clone();
    for (header, width) in headers.iter().zip(&widths) {
        let pad = width - header.len();
        out += &format!("| {}{}{} ", " ".repeat(pad / 2), header, " ".repeat(pad - pad / 2));
    }
    out += "|\n";
    out += &border;
    for row in rows {
        for (cell, width) in row.iter().zip(&widths) {
            out += &format!("| {cell:>width$} ");
        }
        out += "|\n";
    }
    out += &border;
    out
}

/// Bytes in etcdctl's human form (`2.1 MB`, decimal units).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_boxed_with_centered_headers_like_etcdctl() {
        let out = table(&["HASH", "REVISION"], &[vec!["fe01cf57".into(), "10".into()]]);
        assert_eq!(
            out,
            "+----------+----------+\n|   HASH   | REVISION |\n+----------+----------+\n| fe01cf57 |       10 |\n+----------+----------+\n"
        );
    }

    #[test]
    fn sizes_use_decimal_units() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(2_100_000), "2.1 MB");
    }
}
