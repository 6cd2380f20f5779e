//! The CRI log file format (`<RFC3339Nano> <stream> <P|F> <content>`): the
//! shim writes it, berthctl and the tests read it as kubelet and crictl do
//! (P records are joined with what follows them).
use std::time::SystemTime;

/// One parsed record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// The timestamp as written.
    pub timestamp: &'a str,
    /// `stdout` or `stderr`.
    pub stream: &'a str,
    /// Whether this record completes a line (F) or is a part of one (P).
    pub full: bool,
    /// The content, without the trailing newline.
    pub content: &'a [u8],
}

/// Parses one line (without its `\n`). `None` when it is not a CRI record.
pub fn parse_line(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let ts = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tags = std::str::from_utf8(parts.next()?).ok()?;
    let content = parts.next().unwrap_or(b"");
    if stream != "stdout" && stream != "stderr" {
        return None;
    }
    // Tags are ':'-separated; only the first one counts.
    let full = match tags.split(':').next()? {
        "F" => true,
        "P" => false,
        _ => return None,
    };
    if !ts.contains('T') {
        return None;
    }
    Some(Record { timestamp: ts, stream, full, content })
}

/// Joins a whole file's records into per-stream output as the container
/// wrote it: F records get their newline back, P records do not.
pub fn split_streams(data: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    for line in data.split(|&b| b == b'\n') {
        let Some(r) = parse_line(line) else { continue };
        let buf = if r.stream == "stdout" { &mut out } else { &mut err };
        buf.extend_from_slice(r.content);
        if r.full {
            buf.push(b'\n');
        }
    }
    (out, err)
}

/// Appends one record: `<stamp> <stream> <F|P> <content>\n`; `full` is
/// false for a part of a line the next record continues.
pub fn write_record(out: &mut Vec<u8>, stamp: &[u8], stream: &str, full: bool, content: &[u8]) {
    out.extend_from_slice(stamp);
    out.push(b' ');
    out.extend_from_slice(stream.as_bytes());
    out.push(b' ');
    out.push(if full { b'F' } else { b'P' });
    out.push(b' ');
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// Formats a time as RFC3339 in UTC with nine fraction digits.
pub fn rfc3339_nano(ts: SystemTime) -> String {
    let d = ts.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
// Day and month are 1..=31 and 1..=12 here.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_joins() {
        let data = b"2016-10-06T00:17:09.669794202Z stdout P ab\n2016-10-06T00:17:09.669794202Z stderr F e\n2016-10-06T00:17:09.669794202Z stdout F c\n2016-10-06T00:17:09.669794202Z stdout F \n";
        let (o, e) = split_streams(data);
        assert_eq!(o, b"abc\n\n");
        assert_eq!(e, b"e\n");
        assert!(parse_line(b"garbage").is_none());
        assert!(parse_line(b"2016-10-06T00:17:09Z stdout F:x y").unwrap().full);
    }
}
