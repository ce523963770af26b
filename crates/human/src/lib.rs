//! Text for people, in one place for every part that prints or renders: durations, ages, byte
//! sizes, dates, aligned tables, and outside text made safe for a terminal. No IO.

/// Whether a character must not reach a terminal as it is: control characters (a newline in a
/// name forges a line, ESC drives the terminal) and the format characters that reorder or hide
/// text (U+202E shows `exe.txt` for `txt.exe`, U+200B hides).
pub fn unsafe_for_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// `s` as a person may see it on a terminal: every [`unsafe_for_terminal`] character escaped
/// (`\n`, `\u{202e}`, NUL as `\u{0}`), the rest as it is.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if unsafe_for_terminal(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Columns aligned under their headers, two spaces apart; each cell on one line, escaped, and
/// cut to `max` characters (`usize::MAX`: never cut).
pub fn table(headers: &[&str], rows: &[Vec<String>], max: usize) -> String {
    let cut = |s: &str| -> String {
        let one_line = printable(&s.replace(['\n', '\r', '\t'], " "));
        if one_line.chars().count() > max {
            one_line.chars().take(max.saturating_sub(1)).collect::<String>() + "…"
        } else {
            one_line
        }
    };
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| cut(c)).collect()).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<w$}", c, w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        parts.join("  ").trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// A duration in its largest unit, for narrow columns: `45s`, `12m`, `3h`, `2d`.
pub fn short_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A duration in two units, for pages: `45 s`, `12 min`, `3 h 5 min`, `2 d 4 h`.
pub fn long_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `3s ago` for an epoch-milliseconds time, `-` for none.
pub fn age(at_ms: Option<u64>, now_ms: u64) -> String {
    match at_ms {
        Some(t) => format!("{} ago", short_duration(now_ms.saturating_sub(t))),
        None => "-".into(),
    }
}

/// A size in bytes, binary units: `512 B`, `1.5 KiB`, `12.3 MiB`, `2.10 GiB`.
pub fn bytes(b: u64) -> String {
    const K: f64 = 1024.0;
    match b {
        b if b < 1024 => format!("{b} B"),
        b if b < 1 << 20 => format!("{:.1} KiB", b as f64 / K),
        b if b < 1 << 30 => format!("{:.1} MiB", b as f64 / K / K),
        b => format!("{:.2} GiB", b as f64 / K / K / K),
    }
}

/// `2026-11-22 10:31:05 UTC` for an epoch-milliseconds time.
pub fn utc(ms: u64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms as i64) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        None => format!("{ms} ms after the epoch"),
    }
}

/// Days since the Unix epoch of a `YYYY-MM-DD` from 1970 on, if it is a real day.
pub fn parse_day(s: &str) -> Option<u64> {
    if s.len() != 10 {
        return None;
    }
    let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    u64::try_from(d.signed_duration_since(chrono::NaiveDate::default()).num_days()).ok()
}

/// `YYYY-MM-DD` of a day number (days since the Unix epoch).
pub fn format_day(days: u64) -> String {
    let d = chrono::NaiveDate::default() + chrono::Days::new(days);
    d.format("%Y-%m-%d").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_escaped() {
        assert_eq!(printable("a\nb\u{202e}c\0d\u{1b}[31m é"), "a\\nb\\u{202e}c\\u{0}d\\u{1b}[31m é");
    }

    #[test]
    fn tables_align_cut_and_escape() {
        let t = table(&["A", "LONG"], &[vec!["x\ny".into(), "abcdef".into()]], 4);
        assert_eq!(t, "A    LONG\nx y  abc…\n");
    }

    #[test]
    fn durations_ages_and_sizes() {
        assert_eq!(
            (short_duration(59_999), short_duration(3_600_000), short_duration(90_000_000)),
            ("59s".into(), "1h".into(), "1d".into())
        );
        assert_eq!(long_duration(3_900_000), "1 h 5 min");
        assert_eq!((age(Some(1000), 61_000), age(None, 5)), ("1m ago".into(), "-".into()));
        assert_eq!((bytes(900), bytes(1536), bytes(5 << 30)), ("900 B".into(), "1.5 KiB".into(), "5.00 GiB".into()));
    }

    #[test]
    fn days_round_trip_and_bad_ones_are_refused() {
        assert_eq!(parse_day("1970-01-01"), Some(0));
        assert_eq!(parse_day("2024-02-29").map(format_day).as_deref(), Some("2024-02-29"));
        for bad in ["2023-02-29", "1969-12-31", "2024-13-01", "2024-1-1", "20240101", "x"] {
            assert_eq!(parse_day(bad), None, "{bad}");
        }
        assert_eq!(utc(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
    }
}
