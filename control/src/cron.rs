//! Cron schedules as CronJobs write them (the standard five fields — minute, hour, day of month,
//! month, day of week — with `*`, `?`, lists, ranges, steps and month and day names, or a macro
//! such as `@hourly`), and the next time one fires in a time zone. As in Vixie cron, when both
//! the day of month and the day of week are restricted, a day matching either fires.

use k8s_openapi::jiff::civil::{Date, DateTime, Time};
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{Timestamp, ToSpan};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Whether the day of month, and the day of week, were `*` (or `?`).
    any_day: bool,
    any_weekday: bool,
}

const MONTHS: &[&str] = &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
/// How far ahead a schedule is searched before it is called one that never fires (31 February).
const SEARCH_YEARS: i16 = 5;

fn value(s: &str, names: &[&str], first: u32) -> Result<u32, String> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Ok(i as u32 + first);
    }
    s.parse::<u32>().map_err(|_| format!("failed to parse int from {s}"))
}

/// One field as a bit set of the values it allows.
fn field(spec: &str, lo: u32, hi: u32, names: &[&str], name_base: u32) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let mut star = false;
    for part in spec.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().map_err(|_| format!("failed to parse int from {s}"))?),
            None => (part, 1),
        };
        if step == 0 {
            return Err(format!("step of range should be a positive number: {part}"));
        }
        let (start, end) = if range == "*" || range == "?" {
            star = step == 1;
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, names, name_base)?, value(b, names, name_base)?)
        } else {
            let v = value(range, names, name_base)?;
            (v, if part.contains('/') { hi } else { v })
        };
        if start < lo {
            return Err(format!("beginning of range ({start}) below minimum ({lo}): {part}"));
        }
        if end > hi {
            return Err(format!("end of range ({end}) above maximum ({hi}): {part}"));
        }
        if start > end {
            return Err(format!("beginning of range ({start}) beyond end of range ({end}): {part}"));
        }
        let mut v = start;
        while v <= end {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, star))
}

impl Schedule {
    pub fn parse(spec: &str) -> Result<Schedule, String> {
        let spec = spec.trim();
        let expanded = match spec {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            s if s.starts_with('@') => return Err(format!("unrecognized descriptor: {s}")),
            s => s,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!("expected exactly 5 fields, found {}: {spec}", fields.len()));
        }
        let (minutes, _) = field(fields[0], 0, 59, &[], 0)?;
        let (hours, _) = field(fields[1], 0, 23, &[], 0)?;
        let (days, any_day) = field(fields[2], 1, 31, &[], 0)?;
        let (months, _) = field(fields[3], 1, 12, MONTHS, 1)?;
        let (mut weekdays, any_weekday) = field(fields[4], 0, 7, WEEKDAYS, 0)?;
        // 7 is Sunday too.
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & !(1 << 7);
        }
        Ok(Schedule { minutes, hours, days, months, weekdays, any_day, any_weekday })
    }

    fn day_matches(&self, d: Date) -> bool {
        let dom = self.days & (1 << d.day() as u32) != 0;
        let dow = self.weekdays & (1 << d.weekday().to_sunday_zero_offset() as u32) != 0;
        match (self.any_day, self.any_weekday) {
            (true, _) | (_, true) => dom && dow,
            _ => dom || dow,
        }
    }

    /// The first time after `after` at which the schedule fires, in `tz`; None if it never does
    /// within five years.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let local = tz.to_datetime(after);
        let mut t = local.with().second(0).subsec_nanosecond(0).build().ok()?.checked_add(1.minute()).ok()?;
        let limit = local.year() + SEARCH_YEARS;
        while t.year() <= limit {
            if self.months & (1 << t.month() as u32) == 0 {
                let next = t.date().first_of_month().checked_add(1.month()).ok()?;
                t = DateTime::from_parts(next, Time::midnight());
                continue;
            }
            if !self.day_matches(t.date()) {
                t = DateTime::from_parts(t.date().tomorrow().ok()?, Time::midnight());
                continue;
            }
            if self.hours & (1 << t.hour() as u32) == 0 {
                t = t.with().minute(0).build().ok()?.checked_add(1.hour()).ok()?;
                continue;
            }
            if self.minutes & (1 << t.minute() as u32) == 0 {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            // A local time skipped by a clock change fires at the first instant after the gap.
            let at = tz.to_ambiguous_zoned(t).compatible().ok()?.timestamp();
            if at > after {
                return Some(at);
            }
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn schedules_parse_as_cron_writes_them() {
        for good in
            ["* * * * *", "*/5 0-6 1,15 JAN-jun mon-FRI", "0 0 * * 7", "@hourly", "30 2 ? * sun", "0 9-17/2 * * 1-5"]
        {
            assert!(Schedule::parse(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("* * * *", "exactly 5 fields"),
            ("60 * * * *", "above maximum"),
            ("* * 0 * *", "below minimum"),
            ("*/0 * * * *", "positive"),
            ("@often", "unrecognized"),
            ("x * * * *", "parse int"),
        ] {
            let e = Schedule::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(Schedule::parse("0 0 * * 7").unwrap(), Schedule::parse("0 0 * * 0").unwrap());
    }

    #[test]
    fn the_next_time_follows_the_fields_and_the_zone() {
        let utc = TimeZone::UTC;
        let next =
            |s: &str, after: &str| Schedule::parse(s).unwrap().next_after(ts(after), &utc).map(|t| t.to_string());
        assert_eq!(next("* * * * *", "2026-12-06T11:30:20Z").as_deref(), Some("2026-12-06T11:31:00Z"));
        assert_eq!(next("*/15 * * * *", "2026-12-06T11:30:00Z").as_deref(), Some("2026-12-06T11:45:00Z"));
        assert_eq!(next("0 0 1 1 *", "2026-12-06T11:30:00Z").as_deref(), Some("2027-01-01T00:00:00Z"));
        // 6 Dec 2026 is a Sunday: the next Monday 9:00.
        assert_eq!(next("0 9 * * mon", "2026-12-06T11:30:00Z").as_deref(), Some("2026-12-07T09:00:00Z"));
        // Day of month and day of week both restricted: either fires.
        assert_eq!(next("0 0 13 * fri", "2026-12-06T00:00:00Z").as_deref(), Some("2026-12-11T00:00:00Z"));
        assert_eq!(next("0 0 30 2 *", "2026-12-06T00:00:00Z"), None, "31 February never comes");
        // In a zone: 9:00 in New York is 14:00 UTC in December.
        let ny = TimeZone::get("America/New_York").unwrap();
        let t = Schedule::parse("0 9 * * *").unwrap().next_after(ts("2026-12-06T15:00:00Z"), &ny).unwrap();
        assert_eq!(t.to_string(), "2026-12-07T14:00:00Z");
        // 2:30 does not exist on 8 March 2026 in New York: it fires the gap's hour later, at 3:30.
        let t = Schedule::parse("30 2 * * *").unwrap().next_after(ts("2026-03-08T05:00:00Z"), &ny).unwrap();
        assert_eq!(t.to_string(), "2026-03-08T07:30:00Z");
    }
}
