//! Cron schedules: the standard five fields (minute, hour, day of month,
//! month, day of week), or six with seconds first, evaluated on the wall
//! clock of a time zone.
//!
//! Fields take `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, lists
//! `a,b,c`, month names (`jan`) and day names (`mon`); Sunday is 0 or 7.
//! `@yearly`, `@monthly`, `@weekly`, `@daily` and `@hourly` work too. As in
//! Vixie cron, when both day fields are restricted, a day matching either
//! one matches.
//!
//! Across daylight-saving changes: a wall-clock time that does not exist
//! (spring forward) is skipped, and one that happens twice (fall back)
//! fires once, the first time.

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// A parsed schedule in its time zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    any_day: bool,
    any_weekday: bool,
    has_seconds: bool,
    tz: Tz,
}

const MONTHS: [&str; 12] =
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Schedule {
    /// Parses `expr` for the time zone `tz` (an IANA name such as
    /// `Europe/Paris`, or `UTC`).
    pub fn parse(expr: &str, tz: &str) -> Result<Schedule, String> {
        let tz: Tz = tz.parse().map_err(|_| {
            format!("unknown time zone {tz:?}: use an IANA name such as \"Europe/Paris\" or \"UTC\"")
        })?;
        let expanded = match expr.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(format!(
                    "unknown schedule {other:?}: use five fields, or @hourly, @daily, @weekly, @monthly, @yearly"
                ));
            }
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (seconds, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => {
                return Err(format!(
                    "schedule {expr:?} has {n} fields; cron takes five (minute hour day-of-month month day-of-week), or six with seconds first"
                ));
            }
        };
        let field = |name, text, min, max, names: &[&str]| {
            parse_field(text, min, max, names)
                .map_err(|e| format!("schedule {expr:?}: the {name} field {text:?} {e}"))
        };
        let mut weekdays = field("day-of-week", rest[4], 0, 7, &DAYS)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1; // 7 is Sunday too
        }
        Ok(Schedule {
            seconds: field("seconds", seconds, 0, 59, &[])?,
            minutes: field("minute", rest[0], 0, 59, &[])?,
            hours: field("hour", rest[1], 0, 23, &[])?,
            days: field("day-of-month", rest[2], 1, 31, &[])?,
            months: field("month", rest[3], 1, 12, &MONTHS)?,
            weekdays,
            any_day: rest[2] == "*" || rest[2] == "?",
            any_weekday: rest[4] == "*" || rest[4] == "?",
            has_seconds: fields.len() == 6,
            tz,
        })
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        let day = self.days & (1 << date.day()) != 0;
        let weekday = self.weekdays & (1 << date.weekday().num_days_from_sunday()) != 0;
        match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (false, true) => day,
            (true, false) => weekday,
            (false, false) => day || weekday,
        }
    }

    /// The first firing strictly after `after_ms` (ms since the epoch), if
    /// there is one in the next five years.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let after = Utc.timestamp_millis_opt(after_ms as i64).single()?;
        let local = after.with_timezone(&self.tz).naive_local();
        let step = if self.has_seconds { Duration::seconds(1) } else { Duration::minutes(1) };
        let mut t = local.with_nanosecond(0)?;
        if !self.has_seconds {
            t = t.with_second(0)?;
        }
        t += step;
        let limit = t + Duration::days(5 * 366);
        while t < limit {
            if self.months & (1 << t.month()) == 0 {
                let (y, m) = if t.month() == 12 { (t.year() + 1, 1) } else { (t.year(), t.month() + 1) };
                t = NaiveDate::from_ymd_opt(y, m, 1)?.and_hms_opt(0, 0, 0)?;
                continue;
            }
            if !self.day_matches(t.date()) {
                t = start_of_next_day(t)?;
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = t.with_minute(0)?.with_second(0)? + Duration::hours(1);
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t = t.with_second(0)? + Duration::minutes(1);
                continue;
            }
            if self.seconds & (1 << t.second()) == 0 {
                t += Duration::seconds(1);
                continue;
            }
            if let Some(at) = self.tz.from_local_datetime(&t).earliest() {
                let at = at.with_timezone(&Utc);
                if at > after {
                    return Some(at.timestamp_millis() as u64);
                }
            }
            t += step;
        }
        None
    }
}

fn start_of_next_day(t: NaiveDateTime) -> Option<NaiveDateTime> {
    t.date().succ_opt()?.and_hms_opt(0, 0, 0)
}

/// One field as a bit set of the values it allows.
fn parse_field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let value = |s: &str| -> Result<u32, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            // Months are 1-based, days 0-based.
            return Ok(i as u32 + min);
        }
        let n: u32 = s.parse().map_err(|_| format!("has {s:?}, which is not a number"))?;
        if n < min || n > max {
            return Err(format!("has {n}, outside {min} to {max}"));
        }
        Ok(n)
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 =
                    step.parse().map_err(|_| format!("has the step {step:?}, which is not a number"))?;
                if step == 0 {
                    return Err("has a step of 0".into());
                }
                (range, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = match range {
            "*" | "?" => (min, max),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if step > 1 => (value(r)?, max),
                None => {
                    let v = value(r)?;
                    (v, v)
                }
            },
        };
        if lo > hi {
            return Err(format!("has the range {range:?}, which runs backwards"));
        }
        for v in (lo..=hi).step_by(step as usize) {
            bits |= 1 << v;
        }
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(tz: &str, y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> u64 {
        let tz: Tz = tz.parse().unwrap();
        tz.with_ymd_and_hms(y, mo, d, h, mi, s).earliest().unwrap().timestamp_millis() as u64
    }

    fn next(expr: &str, tz: &str, after: u64) -> u64 {
        Schedule::parse(expr, tz).unwrap().next_after(after).unwrap()
    }

    #[test]
    fn every_minute_fires_on_the_next_minute() {
        let t = at("UTC", 2026, 11, 22, 10, 15, 30);
        assert_eq!(next("* * * * *", "UTC", t), at("UTC", 2026, 11, 22, 10, 16, 0));
        // Exactly on a firing: the next one, never the same.
        let on = at("UTC", 2026, 11, 22, 10, 16, 0);
        assert_eq!(next("* * * * *", "UTC", on), at("UTC", 2026, 11, 22, 10, 17, 0));
    }

    #[test]
    fn fields_lists_ranges_steps_and_names() {
        let t = at("UTC", 2026, 11, 22, 10, 15, 0); // a Sunday
        assert_eq!(next("*/20 * * * *", "UTC", t), at("UTC", 2026, 11, 22, 10, 20, 0));
        assert_eq!(next("0 9-17/4 * * *", "UTC", t), at("UTC", 2026, 11, 22, 13, 0, 0));
        assert_eq!(next("30 8 * * mon-fri", "UTC", t), at("UTC", 2026, 11, 23, 8, 30, 0));
        assert_eq!(next("0 0 1 jan *", "UTC", t), at("UTC", 2027, 1, 1, 0, 0, 0));
        assert_eq!(next("0 12 * * 7", "UTC", t), at("UTC", 2026, 11, 22, 12, 0, 0));
        assert_eq!(next("@daily", "UTC", t), at("UTC", 2026, 11, 23, 0, 0, 0));
        assert_eq!(next("0 0 29 2 *", "UTC", t), at("UTC", 2028, 2, 29, 0, 0, 0));
    }

    #[test]
    fn both_day_fields_restricted_means_either() {
        // The 1st of the month, or any Monday.
        let t = at("UTC", 2026, 11, 22, 10, 0, 0);
        assert_eq!(next("0 0 1 * mon", "UTC", t), at("UTC", 2026, 11, 23, 0, 0, 0));
        let t = at("UTC", 2026, 11, 25, 10, 0, 0);
        assert_eq!(next("0 0 1 * mon", "UTC", t), at("UTC", 2026, 11, 30, 0, 0, 0));
        assert_eq!(
            next("0 0 1 * mon", "UTC", at("UTC", 2026, 11, 30, 1, 0, 0)),
            at("UTC", 2026, 12, 1, 0, 0, 0)
        );
    }

    #[test]
    fn seconds_come_first_in_six_fields() {
        let t = at("UTC", 2026, 11, 22, 10, 15, 3);
        assert_eq!(next("*/5 * * * * *", "UTC", t), at("UTC", 2026, 11, 22, 10, 15, 5));
    }

    #[test]
    fn time_zones_use_the_local_wall_clock() {
        let t = at("UTC", 2026, 11, 22, 0, 0, 0);
        // 09:00 in Paris is 08:00 UTC in winter.
        assert_eq!(next("0 9 * * *", "Europe/Paris", t), at("UTC", 2026, 11, 22, 8, 0, 0));
    }

    #[test]
    fn daylight_saving_skips_missing_times_and_fires_repeated_ones_once() {
        // New York springs forward on 2026-03-08 at 02:00: 02:30 does not exist.
        let before = at("America/New_York", 2026, 3, 7, 12, 0, 0);
        assert_eq!(
            next("30 2 * * *", "America/New_York", before),
            at("America/New_York", 2026, 3, 9, 2, 30, 0)
        );
        // It falls back on 2026-11-01: 01:30 happens twice, fires once.
        let before = at("America/New_York", 2026, 10, 31, 12, 0, 0);
        let first = next("30 1 * * *", "America/New_York", before);
        assert_eq!(first, at("America/New_York", 2026, 11, 1, 1, 30, 0));
        let second = next("30 1 * * *", "America/New_York", first);
        assert_eq!(second, at("America/New_York", 2026, 11, 2, 1, 30, 0));
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        for (expr, tz, needle) in [
            ("* * * *", "UTC", "has 4 fields"),
            ("61 * * * *", "UTC", "outside 0 to 59"),
            ("* * * foo *", "UTC", "not a number"),
            ("*/0 * * * *", "UTC", "step of 0"),
            ("5-1 * * * *", "UTC", "backwards"),
            ("* * * * *", "Mars/Olympus", "unknown time zone"),
            ("@sometimes", "UTC", "unknown schedule"),
        ] {
            let error = Schedule::parse(expr, tz).unwrap_err();
            assert!(error.contains(needle), "{expr}: {error}");
        }
    }
}
