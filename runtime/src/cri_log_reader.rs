//! Reading CRI log files (`<RFC3339Nano> <stream> <P|F> <content>`), as
//! kubelet and crictl do: P records are joined with what follows them.

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
