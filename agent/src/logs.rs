//! Container logs as CRI writes them (`<RFC 3339 time> <stdout|stderr> <P|F> <content>`, one
//! line per write, `P` for a part of a longer line) read back as `kubectl logs` shows them:
//! parts joined, optionally with their times, from a time on, the last N lines, at most N bytes.

use chrono::{DateTime, Utc};

/// What a log request asks for (the query of `pods/log`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub since: Option<DateTime<Utc>>,
    pub limit_bytes: Option<usize>,
}

impl LogOptions {
    /// From a query string (`follow=true&tailLines=10&sinceSeconds=60&…`); a bad value is an error
    /// naming it.
    pub fn parse(query: &str, now: DateTime<Utc>) -> Result<LogOptions, String> {
        let mut o = LogOptions::default();
        for (k, v) in form_pairs(query) {
            let flag = || matches!(v.as_str(), "" | "true" | "1");
            let number = |what: &str| v.parse::<i64>().map_err(|_| format!("{what}: {v:?} is not a number"));
            match k.as_str() {
                "follow" => o.follow = flag(),
                "previous" => o.previous = flag(),
                "timestamps" => o.timestamps = flag(),
                "tailLines" => {
                    let n = number("tailLines")?;
                    o.tail_lines = Some(n.max(0) as usize);
                }
                "limitBytes" => {
                    let n = number("limitBytes")?;
                    if n < 1 {
                        return Err("limitBytes: must be greater than 0".into());
                    }
                    o.limit_bytes = Some(n as usize);
                }
                "sinceSeconds" => {
                    let n = number("sinceSeconds")?;
                    if n < 1 {
                        return Err("sinceSeconds: must be greater than 0".into());
                    }
                    o.since = Some(now - chrono::Duration::seconds(n));
                }
                "sinceTime" => {
                    let t = DateTime::parse_from_rfc3339(&v).map_err(|e| format!("sinceTime: {v:?}: {e}"))?;
                    o.since = Some(t.with_timezone(&Utc));
                }
                _ => {}
            }
        }
        Ok(o)
    }
}

/// `application/x-www-form-urlencoded` pairs, decoded.
pub fn form_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One whole line of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// When its first part was written, as CRI wrote it.
    pub time: String,
    pub content: Vec<u8>,
}

/// Joins CRI's records into lines. Records arrive in pieces as the file grows: `feed` takes
/// whole records (the caller splits the file at newlines) and returns the lines they complete.
#[derive(Debug, Default)]
pub struct Joiner {
    partial: Option<Line>,
}

impl Joiner {
    pub fn feed(&mut self, record: &[u8]) -> Option<Line> {
        let mut parts = record.splitn(4, |b| *b == b' ');
        let time = std::str::from_utf8(parts.next()?).ok()?.to_string();
        let _stream = parts.next()?;
        let tag = parts.next()?;
        let content = parts.next().unwrap_or(&[]);
        let line = self.partial.get_or_insert_with(|| Line { time, content: Vec::new() });
        line.content.extend_from_slice(content);
        if tag == b"P" {
            return None;
        }
        self.partial.take()
    }
}

/// Whole records of `data` (up to its last newline) and how many bytes they take.
pub fn records(data: &[u8]) -> (Vec<&[u8]>, usize) {
    let Some(last) = data.iter().rposition(|b| *b == b'\n') else { return (Vec::new(), 0) };
    (data[..last].split(|b| *b == b'\n').collect(), last + 1)
}

fn written_at(line: &Line) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(&line.time).ok().map(|t| t.with_timezone(&Utc))
}

/// A line as `kubectl logs` prints it.
pub fn render(line: &Line, timestamps: bool, out: &mut Vec<u8>) {
    if timestamps {
        out.extend_from_slice(line.time.as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(&line.content);
    out.push(b'\n');
}

/// The log so far, as asked: lines since `since`, the last `tail_lines` of them, at most
/// `limit_bytes` bytes. Returns the output and how many bytes of `data` it consumed (a record
/// still being written is left for later).
pub fn read_all(data: &[u8], o: &LogOptions, joiner: &mut Joiner) -> (Vec<u8>, usize) {
    let (recs, used) = records(data);
    let mut lines: Vec<Line> = recs.into_iter().filter_map(|r| joiner.feed(r)).collect();
    if let Some(since) = o.since {
        lines.retain(|l| written_at(l).is_none_or(|t| t >= since));
    }
    if let Some(n) = o.tail_lines {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let mut out = Vec::new();
    for l in &lines {
        render(l, o.timestamps, &mut out);
    }
    if let Some(limit) = o.limit_bytes {
        out.truncate(limit);
    }
    (out, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2026-01-01T00:00:01.000000000Z stdout F one\n\
                       2026-01-01T00:00:02.000000000Z stderr P tw\n\
                       2026-01-01T00:00:02.500000000Z stderr F o\n\
                       2026-01-01T00:00:03.000000000Z stdout F three\n\
                       2026-01-01T00:00:04.0000";

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:05Z").unwrap().with_timezone(&Utc)
    }

    #[test]
    fn records_join_into_lines_and_options_select_them() {
        let read = |q: &str| {
            let o = LogOptions::parse(q, now()).unwrap();
            let (out, used) = read_all(LOG.as_bytes(), &o, &mut Joiner::default());
            (String::from_utf8(out).unwrap(), used)
        };
        let (all, used) = read("");
        assert_eq!(all, "one\ntwo\nthree\n");
        assert_eq!(&LOG[used..], "2026-01-01T00:00:04.0000", "the record being written is left");
        assert_eq!(read("tailLines=2").0, "two\nthree\n");
        assert_eq!(read("sinceSeconds=3").0, "two\nthree\n");
        assert_eq!(read("sinceTime=2026-01-01T00%3A00%3A03Z").0, "three\n");
        assert_eq!(read("timestamps=true&tailLines=1").0, "2026-01-01T00:00:03.000000000Z three\n");
        assert_eq!(read("limitBytes=6").0, "one\ntw");
        assert!(LogOptions::parse("tailLines=x", now()).is_err());
        assert!(LogOptions::parse("sinceSeconds=0", now()).is_err());
    }

    #[test]
    fn queries_decode() {
        assert_eq!(
            form_pairs("command=sh&command=-c&command=echo+a%20b"),
            vec![
                ("command".to_string(), "sh".to_string()),
                ("command".to_string(), "-c".to_string()),
                ("command".to_string(), "echo a b".to_string()),
            ]
        );
    }
}
