//! On-call rotations: members take turns in order, handing off daily or weekly at a wall-clock
//! time in an IANA time zone (so a 09:00 hand-off stays at 09:00 local across DST), with
//! overrides that put someone else on call for a span. `oncall` is a pure function of the spec
//! and the instant; the tz database is bundled (`jiff`), so no host zoneinfo is needed.

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{OrgId, UserId};

const MAX_MEMBERS: usize = 200;
const MAX_OVERRIDES: usize = 500;

/// How often the turn passes to the next member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Handoff {
    Daily,
    /// Every seven days, on the weekday of `start`.
    Weekly,
}

/// Someone else on call from `start` (inclusive) to `end` (exclusive), RFC 3339.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Override {
    pub user_id: UserId,
    pub start: String,
    pub end: String,
}

/// Everything about a rotation an admin sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotationSpec {
    /// In turn order; the first is on call from the first hand-off on `start`.
    pub members: Vec<UserId>,
    /// IANA name, e.g. `Europe/Berlin`.
    pub time_zone: String,
    pub handoff: Handoff,
    /// Local wall-clock time of the hand-off, `HH:MM`.
    pub handoff_time: String,
    /// Local date of the first hand-off, `YYYY-MM-DD`.
    pub start: String,
    #[serde(default)]
    pub overrides: Vec<Override>,
}

/// A rotation as stored.
#[derive(Debug, Clone)]
pub struct Rotation {
    pub id: crate::ids::RotationId,
    pub org_id: OrgId,
    pub name: String,
    pub spec: RotationSpec,
    pub created_at_ms: i64,
}

/// Who is on call, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnCall {
    pub user: UserId,
    pub by_override: bool,
}

/// A spec's parsed form.
struct Parsed {
    tz: TimeZone,
    time: Time,
    start: Date,
    overrides: Vec<(Timestamp, Timestamp, UserId)>,
}

impl RotationSpec {
    fn parse(&self) -> Result<Parsed, String> {
        let tz = TimeZone::get(&self.time_zone)
            .map_err(|_| format!("unknown time_zone {:?} (an IANA name)", self.time_zone))?;
        let time = parse_hhmm(&self.handoff_time)
            .ok_or_else(|| format!("handoff_time must be HH:MM, got {:?}", self.handoff_time))?;
        let start: Date = self
            .start
            .parse()
            .map_err(|_| format!("start must be YYYY-MM-DD, got {:?}", self.start))?;
        let mut overrides = Vec::new();
        for (i, o) in self.overrides.iter().enumerate() {
            let at = |s: &str| {
                s.parse::<Timestamp>()
                    .map_err(|_| format!("overrides[{i}]: {s:?} is not an RFC 3339 time"))
            };
            let (from, to) = (at(&o.start)?, at(&o.end)?);
            if from >= to {
                return Err(format!("overrides[{i}]: start must be before end"));
            }
            overrides.push((from, to, o.user_id));
        }
        Ok(Parsed {
            tz,
            time,
            start,
            overrides,
        })
    }

    /// Checks the spec; the API layer checks that the members exist.
    pub fn validate(&self) -> Result<(), String> {
        if self.members.is_empty() || self.members.len() > MAX_MEMBERS {
            return Err(format!("members must list 1 to {MAX_MEMBERS} users"));
        }
        if self.overrides.len() > MAX_OVERRIDES {
            return Err(format!("at most {MAX_OVERRIDES} overrides"));
        }
        self.parse().map(|_| ())
    }

    /// Who is on call at `at_ms` (Unix milliseconds).
    pub fn oncall(&self, at_ms: i64) -> Result<OnCall, String> {
        let p = self.parse()?;
        let at = Timestamp::from_millisecond(at_ms).map_err(|e| e.to_string())?;
        if let Some((_, _, user)) = p
            .overrides
            .iter()
            .rev()
            .find(|(s, e, _)| *s <= at && at < *e)
        {
            return Ok(OnCall {
                user: *user,
                by_override: true,
            });
        }
        let turns = self.handoffs_before(&p, at)?;
        let per_turn = match self.handoff {
            Handoff::Daily => 1,
            Handoff::Weekly => 7,
        };
        let index = turns
            .div_euclid(per_turn)
            .rem_euclid(self.members.len() as i64);
        Ok(OnCall {
            user: self.members[index as usize],
            by_override: false,
        })
    }

    /// How many daily hand-off instants since the first lie at or before `at`, minus one
    /// (so the first hand-off's day counts as turn 0; before it, turns are negative).
    fn handoffs_before(&self, p: &Parsed, at: Timestamp) -> Result<i64, String> {
        let local = at.to_zoned(p.tz.clone());
        let today = local.date();
        let handoff_today = today
            .to_datetime(p.time)
            .to_zoned(p.tz.clone())
            .map_err(|e| e.to_string())?;
        let days = p.start.until(today).map_err(|e| e.to_string())?.get_days() as i64;
        Ok(if at >= handoff_today.timestamp() {
            days
        } else {
            days - 1
        })
    }
}

fn parse_hhmm(s: &str) -> Option<Time> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
    Time::new(h, m, 0, 0).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> i64 {
        rfc3339.parse::<Timestamp>().unwrap().as_millisecond()
    }

    fn spec(zone: &str, handoff: Handoff, time: &str, start: &str) -> RotationSpec {
        RotationSpec {
            members: vec![UserId(1), UserId(2), UserId(3)],
            time_zone: zone.into(),
            handoff,
            handoff_time: time.into(),
            start: start.into(),
            overrides: vec![],
        }
    }

    fn who(s: &RotationSpec, at: &str) -> i64 {
        s.oncall(ms(at)).unwrap().user.0
    }

    #[test]
    fn daily_handoff_follows_local_time_across_dst() {
        // New York springs forward on 2026-03-08: 09:00 local is 14:00Z before, 13:00Z after.
        let s = spec("America/New_York", Handoff::Daily, "09:00", "2026-03-06");
        assert_eq!(
            who(&s, "2026-03-06T13:59:00Z"),
            3,
            "before the first hand-off"
        );
        assert_eq!(who(&s, "2026-03-06T14:00:00Z"), 1);
        assert_eq!(who(&s, "2026-03-07T14:00:00Z"), 2);
        assert_eq!(who(&s, "2026-03-08T12:59:00Z"), 2, "08:59 EDT");
        assert_eq!(
            who(&s, "2026-03-08T13:00:00Z"),
            3,
            "09:00 EDT, an hour earlier in UTC"
        );
    }

    #[test]
    fn weekly_handoff_on_the_local_weekday_across_the_date_line() {
        // Monday 2026-03-02 08:00 in Tokyo is Sunday 23:00 UTC.
        let s = spec("Asia/Tokyo", Handoff::Weekly, "08:00", "2026-03-02");
        assert_eq!(who(&s, "2026-03-01T23:00:00Z"), 1);
        assert_eq!(who(&s, "2026-03-08T22:59:00Z"), 1, "Monday 07:59 JST");
        assert_eq!(who(&s, "2026-03-08T23:00:00Z"), 2);
        assert_eq!(who(&s, "2026-03-22T23:00:00Z"), 1, "wraps around");
    }

    #[test]
    fn overrides_win_for_their_span() {
        let mut s = spec("UTC", Handoff::Daily, "00:00", "2026-01-01");
        s.overrides.push(Override {
            user_id: UserId(9),
            start: "2026-01-01T10:00:00Z".into(),
            end: "2026-01-01T12:00:00Z".into(),
        });
        assert_eq!(who(&s, "2026-01-01T09:59:59Z"), 1);
        assert_eq!(who(&s, "2026-01-01T10:00:00Z"), 9);
        assert!(s.oncall(ms("2026-01-01T11:00:00Z")).unwrap().by_override);
        assert_eq!(who(&s, "2026-01-01T12:00:00Z"), 1);
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(spec("Mars/Olympus", Handoff::Daily, "09:00", "2026-01-01")
            .validate()
            .is_err());
        assert!(spec("UTC", Handoff::Daily, "25:00", "2026-01-01")
            .validate()
            .is_err());
        assert!(spec("UTC", Handoff::Daily, "09:00", "01/01/2026")
            .validate()
            .is_err());
        assert!(spec("UTC", Handoff::Daily, "09:00", "2026-01-01")
            .validate()
            .is_ok());
    }
}
