//! A policy step's active hours: the weekdays and the local time span, in an IANA time zone,
//! during which the step may fire. Outside them the escalation timer skips the step (the
//! timeline says why) and the chain goes on. A span whose end is earlier than its start crosses
//! midnight and belongs to the day it starts on. Pure functions of the window and the instant.

use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const DAY_MINUTES: u32 = 24 * 60;

/// When a step may fire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActiveWindow {
    /// `mon` … `sun`; empty or absent: every day. A span past midnight counts for the day it
    /// starts on (`fri` 22:00–06:00 includes Saturday 03:00).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<String>,
    /// Local start, `HH:MM`, inclusive.
    pub from: String,
    /// Local end, `HH:MM`, exclusive (`24:00`: the end of the day); earlier than `from`:
    /// the span crosses midnight.
    pub to: String,
    /// IANA name, e.g. `Asia/Shanghai`.
    pub time_zone: String,
}

/// A window's parsed form.
struct Parsed {
    tz: TimeZone,
    /// Bit `i` set: day `DAYS[i]` is included.
    days: u8,
    from: u32,
    to: u32,
}

impl ActiveWindow {
    /// Checks the days, the times and the zone; the error names the bad field.
    pub fn validate(&self) -> Result<(), String> {
        self.parse().map(|_| ())
    }

    fn parse(&self) -> Result<Parsed, String> {
        let tz = TimeZone::get(&self.time_zone)
            .map_err(|_| format!("unknown time_zone {:?} (an IANA name)", self.time_zone))?;
        let from = minutes(&self.from)
            .filter(|m| *m < DAY_MINUTES)
            .ok_or_else(|| format!("from must be HH:MM (00:00 to 23:59), got {:?}", self.from))?;
        let to = minutes(&self.to)
            .filter(|m| *m > 0)
            .ok_or_else(|| format!("to must be HH:MM (00:01 to 24:00), got {:?}", self.to))?;
        if from == to {
            return Err("from and to must differ (00:00 to 24:00 is the whole day)".into());
        }
        let mut days = 0u8;
        for day in &self.days {
            let i = DAYS
                .iter()
                .position(|d| d.eq_ignore_ascii_case(day.trim()))
                .ok_or_else(|| {
                    format!("days must be mon, tue, wed, thu, fri, sat or sun, got {day:?}")
                })?;
            days |= 1 << i;
        }
        if days == 0 {
            days = 0x7f;
        }
        Ok(Parsed { tz, days, from, to })
    }

    /// Whether the step may fire at `at_ms`. A window that no longer parses (it was checked
    /// when the policy was saved) counts as open: a step should rather fire than vanish.
    pub fn contains(&self, at_ms: i64) -> bool {
        let Ok(p) = self.parse() else { return true };
        let Ok(at) = Timestamp::from_millisecond(at_ms) else {
            return true;
        };
        let local = at.to_zoned(p.tz);
        let minute = local.hour() as u32 * 60 + local.minute() as u32;
        let today = local.weekday().to_monday_zero_offset() as u32;
        let yesterday = (today + 6) % 7;
        let has = |day: u32| p.days & (1 << day) != 0;
        if p.from < p.to {
            has(today) && (p.from..p.to).contains(&minute)
        } else {
            (has(today) && minute >= p.from) || (has(yesterday) && minute < p.to)
        }
    }

    /// How the timeline describes the window: `mon,fri 09:00–18:00 Asia/Shanghai`.
    pub fn describe(&self) -> String {
        let days = if self.days.is_empty() {
            "every day".to_string()
        } else {
            self.days.join(",")
        };
        format!("{days} {}–{} {}", self.from, self.to, self.time_zone)
    }
}

/// `HH:MM` as minutes after midnight (up to 24:00).
fn minutes(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    let total = h * 60 + m;
    (m < 60 && total <= DAY_MINUTES).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(days: &[&str], from: &str, to: &str, tz: &str) -> ActiveWindow {
        ActiveWindow {
            days: days.iter().map(|d| d.to_string()).collect(),
            from: from.into(),
            to: to.into(),
            time_zone: tz.into(),
        }
    }

    fn ms(rfc3339: &str) -> i64 {
        rfc3339.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn office_hours_in_the_windows_zone() {
        let w = window(
            &["mon", "tue", "wed", "thu", "fri"],
            "09:00",
            "18:00",
            "Asia/Shanghai",
        );
        // Wednesday 2026-11-25 10:00 in Shanghai is 02:00 UTC.
        assert!(w.contains(ms("2026-11-25T02:00:00Z")));
        assert!(w.contains(ms("2026-11-25T01:00:00Z")), "09:00 is inside");
        assert!(!w.contains(ms("2026-11-25T10:00:00Z")), "18:00 is outside");
        assert!(!w.contains(ms("2026-11-25T00:59:00Z")));
        // Saturday 2026-11-28 10:00 local: not a listed day.
        assert!(!w.contains(ms("2026-11-28T02:00:00Z")));
    }

    #[test]
    fn a_span_across_midnight_belongs_to_the_day_it_starts() {
        let w = window(&["fri"], "22:00", "06:00", "UTC");
        assert!(w.contains(ms("2026-11-27T23:00:00Z")), "Friday 23:00");
        assert!(w.contains(ms("2026-11-28T03:00:00Z")), "Saturday 03:00");
        assert!(!w.contains(ms("2026-11-28T06:00:00Z")), "Saturday 06:00");
        assert!(!w.contains(ms("2026-11-28T23:00:00Z")), "Saturday 23:00");
        assert!(
            !w.contains(ms("2026-11-27T03:00:00Z")),
            "Friday 03:00 is Thursday's night"
        );
        let nightly = window(&[], "20:00", "08:00", "Europe/Berlin");
        assert!(
            nightly.contains(ms("2026-11-25T06:30:00Z")),
            "07:30 in Berlin"
        );
        assert!(!nightly.contains(ms("2026-11-25T12:00:00Z")));
        let whole = window(&["sun"], "00:00", "24:00", "UTC");
        assert!(whole.contains(ms("2026-11-29T23:59:00Z")));
        assert!(!whole.contains(ms("2026-11-30T00:00:00Z")));
    }

    #[test]
    fn bad_windows_are_named() {
        let bad = |w: ActiveWindow| w.validate().unwrap_err();
        assert!(bad(window(&[], "9:00", "18:00", "UTC")).contains("from"));
        assert!(bad(window(&[], "09:00", "24:30", "UTC")).contains("to"));
        assert!(bad(window(&[], "09:60", "18:00", "UTC")).contains("from"));
        assert!(bad(window(&[], "09:00", "09:00", "UTC")).contains("differ"));
        assert!(bad(window(&[], "00:00", "24:00", "Mars/Base")).contains("time_zone"));
        assert!(bad(window(&["funday"], "09:00", "18:00", "UTC")).contains("days"));
        assert!(window(&["Sat"], "00:00", "24:00", "UTC").validate().is_ok());
    }
}
