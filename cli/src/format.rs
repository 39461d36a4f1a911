//! Text output: UTC times, ages, durations, tables, payload previews.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `2026-12-02T05:20:01.123Z` for `time`.
pub(crate) fn utc(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// The time of day of `time`, UTC, to the millisecond.
pub(crate) fn clock(time: SystemTime) -> String {
    utc(time)[11..23].to_owned()
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A short age: `42s`, `7m`, `3h`, `2d`.
pub(crate) fn age(age: Duration) -> String {
    let secs = age.as_secs();
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// Parses `90`, `90s`, `15m`, `2h`, `7d` (seconds when no unit).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}`: expected a duration such as 90s, 15m, 2h or 7d"))?;
    let scale = match unit {
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (use s, m, h or d)"
            ))
        }
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("`{text}`: {e}"))
}

/// Prints `rows` under `header`, columns padded to their widest cell; the last
/// column is not padded.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `text` cut to `max` characters, with `…` when cut; control characters escaped.
pub(crate) fn cell(text: &str, max: usize) -> String {
    let clean: String = text.chars().flat_map(char::escape_debug).collect();
    if clean.chars().count() <= max {
        return clean;
    }
    let mut cut: String = clean.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// At most `max` bytes of `payload` as text: UTF-8 with control characters
/// escaped, else hex.
pub(crate) fn preview(payload: &[u8], max: usize) -> String {
    let shown = &payload[..payload.len().min(max)];
    let more = if payload.len() > max {
        format!(" … ({} more bytes)", payload.len() - max)
    } else {
        String::new()
    };
    match std::str::from_utf8(shown) {
        Ok(text) => format!("{}{more}", text.escape_debug()),
        Err(_) => {
            let hex: Vec<String> = shown.iter().map(|b| format!("{b:02x}")).collect();
            format!("(binary) {}{more}", hex.join(" "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_are_rfc3339() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_796_189_601_123);
        assert_eq!(utc(t), "2026-12-02T05:33:21.123Z");
        assert_eq!(clock(t), "05:33:21.123");
    }

    #[test]
    fn durations_parse_with_units_and_reject_nonsense() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1.5d"), Ok(Duration::from_secs(129_600)));
        assert_eq!(
            parse_duration("5w"),
            Err("`5w`: unknown unit `w` (use s, m, h or d)".to_owned())
        );
        assert_eq!(
            parse_duration("soon"),
            Err("`soon`: expected a duration such as 90s, 15m, 2h or 7d".to_owned())
        );
    }

    #[test]
    fn previews_are_bounded_and_escaped() {
        assert_eq!(preview(b"line\nnext", 100), "line\\nnext");
        assert_eq!(preview(b"abcdef", 3), "abc … (3 more bytes)");
        assert_eq!(preview(&[0xff, 0x00], 8), "(binary) ff 00");
        assert_eq!(cell("a\r\nb", 10), "a\\r\\nb");
        assert_eq!(cell("abcdefgh", 5), "abcd…");
        assert_eq!(age(Duration::from_secs(42)), "42s");
        assert_eq!(age(Duration::from_secs(7200)), "2h");
    }
}
