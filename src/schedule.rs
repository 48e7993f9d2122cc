//! Quiet-time windows: maintenance windows during which the relay holds mail.
//!
//! A `[[quiet_time]]` entry is either *recurring* (`start`/`end` as local `HH:MM`,
//! optional `days`, optional IANA `timezone`, default UTC) or *one-off*
//! (`from`/`until` as RFC 3339 instants). This module is pure logic: it never
//! reads the clock, callers pass the instants they care about.
//!
//! # Recurring windows and daylight saving time
//!
//! `days` are the local days a window *starts* on; a window whose `end` is before
//! its `start` crosses midnight and ends on the following local day, even if that
//! day is not listed. Each occurrence is computed from the local wall times on its
//! own dates, so a 22:00-06:00 window spanning a DST change lasts 7 or 9 real
//! hours. Local times are mapped to instants the way cron/systemd-style
//! schedulers do:
//!
//! * a local time that does not exist (spring-forward gap) means the first instant
//!   after the gap: 02:30 on the Europe/Berlin spring day is 03:00 local (01:00 UTC);
//! * a local time that occurs twice (fall-back overlap) means the *earlier*
//!   occurrence.
//!
//! If both ends of an occurrence fall in the same gap it is empty and skipped.

use crate::config::{self, Problem};
use chrono::{
    DateTime, Datelike, Days, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeDelta,
    TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;

/// Local days before the day of interest whose occurrences are examined
/// (an occurrence from the previous day may still be running).
const DAYS_BEFORE: u64 = 2;
/// Local days after the day of interest examined by `next_change`; two weeks
/// cover a weekly window even if one of its occurrences is empty.
const DAYS_AFTER: u64 = 15;
/// Longest spring-forward gap searched for (real gaps are at most 24 hours).
const MAX_GAP_HOURS: i64 = 27;

/// Problems in one `[[quiet_time]]` entry; `key` is relative to the entry
/// (`"timezone"`, `"start"`, `"from"`, `"until"`, `"days[2]"`, `"backends[0]"`,
/// `"name"`). Every problem is reported, not just the first.
pub fn validate(q: &config::QuietTime, backends: &[config::Backend]) -> Vec<Problem> {
    let mut problems = Window::from_config(q).err().unwrap_or_default();
    problems.extend(check_backends(&q.backends, backends));
    problems
}

/// One quiet-time window, built from validated config.
///
/// Recurring windows follow the DST rules of the module docs: a local time in a
/// spring-forward gap means the first instant after the gap, an ambiguous
/// (fall-back) local time means its earlier occurrence.
#[derive(Debug, Clone)]
pub struct Window {
    name: String,
    backends: Vec<String>,
    span: Span,
}

/// When a window is active.
#[derive(Debug, Clone)]
enum Span {
    /// Every listed day, between two local wall times.
    Recurring(Recurring),
    /// Once, from `from` (inclusive) to `until` (exclusive).
    OneOff {
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    },
}

/// A recurring window: local `start`..`end` on the `days` it starts on, in `tz`.
#[derive(Debug, Clone)]
struct Recurring {
    tz: Tz,
    days: DaySet,
    start: NaiveTime,
    end: NaiveTime,
}

/// A set of weekdays, one bit per day (Monday = bit 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DaySet(u8);

impl DaySet {
    const ALL: DaySet = DaySet(0x7f);

    fn contains(self, day: Weekday) -> bool {
        self.0 & (1 << day.num_days_from_monday()) != 0
    }

    fn insert(&mut self, day: Weekday) {
        self.0 |= 1 << day.num_days_from_monday();
    }
}

impl Window {
    /// Builds a window from one config entry; on failure returns the same problems
    /// as [`validate`] except the backend-name checks.
    pub fn from_config(q: &config::QuietTime) -> Result<Window, Vec<Problem>> {
        let mut problems = Vec::new();
        if q.name.trim().is_empty() {
            problems.push(problem("name", "must not be empty"));
        }
        match parse_span(q, &mut problems) {
            Some(span) if problems.is_empty() => Ok(Window {
                name: q.name.clone(),
                backends: q.backends.clone(),
                span,
            }),
            _ => Err(problems),
        }
    }

    /// A one-off window from `from` (inclusive) to `until` (exclusive), for
    /// `backends` (empty: all): an ad-hoc window declared from the CLI.
    pub fn one_off(
        name: &str,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        backends: Vec<String>,
    ) -> Window {
        Window {
            name: name.to_owned(),
            backends,
            span: Span::OneOff { from, until },
        }
    }

    /// The backends it applies to (empty: all).
    pub fn backends(&self) -> &[String] {
        &self.backends
    }

    /// What it covers, for people: `recurring` or the one-off's bounds.
    pub fn describe(&self) -> String {
        match &self.span {
            Span::Recurring(r) => format!(
                "recurring {}-{} {}",
                r.start.format("%H:%M"),
                r.end.format("%H:%M"),
                r.tz
            ),
            Span::OneOff { from, until } => {
                format!("{} to {}", from.to_rfc3339(), until.to_rfc3339())
            }
        }
    }

    /// The end of a one-off window (`None` for a recurring one).
    pub fn until(&self) -> Option<DateTime<Utc>> {
        match &self.span {
            Span::OneOff { until, .. } => Some(*until),
            Span::Recurring(_) => None,
        }
    }

    /// The window's name, for logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True if this window applies to the backend named `backend` (a window that
    /// lists no backends applies to all).
    pub fn applies_to(&self, backend: &str) -> bool {
        self.backends.is_empty() || self.backends.iter().any(|b| b == backend)
    }

    /// True if the window is active at `t` (start inclusive, end exclusive).
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        match &self.span {
            Span::Recurring(r) => r.contains(t),
            Span::OneOff { from, until } => *from <= t && t < *until,
        }
    }

    /// The first instant strictly after `after` at which [`Window::contains`]
    /// changes value, or `None` if it never changes again (a one-off window that
    /// has ended).
    pub fn next_change(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.span {
            Span::Recurring(r) => r.next_change(after),
            Span::OneOff { from, until } => [*from, *until].into_iter().find(|&c| c > after),
        }
    }
}

/// All quiet-time windows of a config.
#[derive(Debug, Clone, Default)]
pub struct QuietTime {
    windows: Vec<Window>,
}

impl QuietTime {
    /// Wraps already-built windows.
    pub fn new(windows: Vec<Window>) -> Self {
        QuietTime { windows }
    }

    /// Builds every `[[quiet_time]]` entry; problem keys are prefixed with
    /// `quiet_time[i].`. Backend names are not checked here (see [`validate`]).
    pub fn from_config(qs: &[config::QuietTime]) -> Result<QuietTime, Vec<Problem>> {
        let mut windows = Vec::new();
        let mut problems = Vec::new();
        for (i, q) in qs.iter().enumerate() {
            match Window::from_config(q) {
                Ok(w) => windows.push(w),
                Err(ps) => problems.extend(ps.into_iter().map(|p| Problem {
                    key: format!("quiet_time[{i}].{}", p.key),
                    message: p.message,
                })),
            }
        }
        if problems.is_empty() {
            Ok(QuietTime { windows })
        } else {
            Err(problems)
        }
    }

    /// Names of the windows active at `t` that apply to `backend`.
    pub fn active_for(&self, backend: &str, t: DateTime<Utc>) -> Vec<&str> {
        self.windows
            .iter()
            .filter(|w| w.applies_to(backend) && w.contains(t))
            .map(Window::name)
            .collect()
    }

    /// True if any window (whatever its backends) is active at `t`.
    pub fn any_active(&self, t: DateTime<Utc>) -> bool {
        self.windows.iter().any(|w| w.contains(t))
    }

    /// The earliest [`Window::next_change`] over all windows, or `None` if no
    /// window changes again.
    pub fn next_change(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.windows
            .iter()
            .filter_map(|w| w.next_change(after))
            .min()
    }

    /// True if there are no windows.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// The windows.
    pub fn windows(&self) -> &[Window] {
        &self.windows
    }
}

impl Recurring {
    /// True if an occurrence starting on `t`'s local day or just before covers `t`.
    fn contains(&self, t: DateTime<Utc>) -> bool {
        self.intervals(t, 0)
            .iter()
            .any(|&(start, end)| start <= t && t < end)
    }

    /// First interval boundary strictly after `after`. Intervals are merged, so
    /// every boundary is a real change of `contains`.
    fn next_change(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.intervals(after, DAYS_AFTER)
            .into_iter()
            .flat_map(|(start, end)| [start, end])
            .find(|&c| c > after)
    }

    /// Sorted, merged occurrences starting on the local days from `DAYS_BEFORE`
    /// days before `around`'s local day to `days_after` days after it.
    fn intervals(&self, around: DateTime<Utc>, days_after: u64) -> Vec<Interval> {
        let Some(day) = local_date(self.tz, around) else {
            return Vec::new();
        };
        let first = day.checked_sub_days(Days::new(DAYS_BEFORE)).unwrap_or(day);
        let occurrences = (0..=DAYS_BEFORE + days_after)
            .filter_map(|k| first.checked_add_days(Days::new(k)))
            .filter_map(|date| self.occurrence(date))
            .collect();
        merge(occurrences)
    }

    /// The occurrence starting on local `date`, if `date` is one of the days and
    /// the occurrence is not empty (both ends in the same spring-forward gap).
    fn occurrence(&self, date: NaiveDate) -> Option<Interval> {
        if !self.days.contains(date.weekday()) {
            return None;
        }
        let end_date = if self.end < self.start {
            date.succ_opt()?
        } else {
            date
        };
        let start = resolve(self.tz, date.and_time(self.start))?;
        let end = resolve(self.tz, end_date.and_time(self.end))?;
        (start < end).then_some((start, end))
    }
}

/// A half-open span of time `[start, end)`.
type Interval = (DateTime<Utc>, DateTime<Utc>);

/// Sorts intervals and joins those that overlap or touch.
fn merge(mut intervals: Vec<Interval>) -> Vec<Interval> {
    intervals.sort();
    let mut merged: Vec<Interval> = Vec::with_capacity(intervals.len());
    for (start, end) in intervals {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

/// The local calendar day of `t` in `tz` (`None` only at the edges of chrono's range).
fn local_date(tz: Tz, t: DateTime<Utc>) -> Option<NaiveDate> {
    let offset = tz.offset_from_utc_datetime(&t.naive_utc()).fix();
    Some(t.naive_utc().checked_add_offset(offset)?.date())
}

/// Maps a local wall time to an instant: the earlier one if it occurs twice, the
/// first instant after the gap if it does not exist.
fn resolve(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    existing(tz, local).or_else(|| first_after_gap(tz, local))
}

/// The instant of an existing local time (the earlier one if ambiguous).
fn existing(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
        LocalResult::None => None,
    }
}

/// For a local time inside a spring-forward gap: the instant the gap ends, i.e.
/// the first second whose local time is later than `local`. Found by bisection
/// between existing local times on either side of the gap.
fn first_after_gap(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let shifted = |hours: i64| {
        let t = local.checked_add_signed(TimeDelta::hours(hours))?;
        existing(tz, t)
    };
    let mut lo = (1..=MAX_GAP_HOURS).find_map(|h| shifted(-h))?.timestamp();
    let mut hi = (1..=MAX_GAP_HOURS).find_map(shifted)?.timestamp();
    for _ in 0..64 {
        if hi - lo <= 1 {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        let mid_local = DateTime::from_timestamp(mid, 0)?.with_timezone(&tz);
        if mid_local.naive_local() > local {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
}

/// The values of an entry that parsed; `None` where absent or malformed.
struct Values {
    tz: Option<Tz>,
    days: Option<DaySet>,
    start: Option<NaiveTime>,
    end: Option<NaiveTime>,
    from: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
}

/// Checks the format of every value present in the entry, pushing problems.
fn parse_values(q: &config::QuietTime, problems: &mut Vec<Problem>) -> Values {
    Values {
        tz: parse_tz(q.timezone.as_deref(), problems),
        days: parse_days(&q.days, problems),
        start: q
            .start
            .as_deref()
            .and_then(|s| parse_time("start", s, problems)),
        end: q
            .end
            .as_deref()
            .and_then(|s| parse_time("end", s, problems)),
        from: q
            .from
            .as_deref()
            .and_then(|s| parse_instant("from", s, problems)),
        until: q
            .until
            .as_deref()
            .and_then(|s| parse_instant("until", s, problems)),
    }
}

/// Parses an entry into a span, pushing problems; `None` if unusable.
fn parse_span(q: &config::QuietTime, problems: &mut Vec<Problem>) -> Option<Span> {
    let values = parse_values(q, problems);
    let recurring = q.start.is_some() || q.end.is_some() || !q.days.is_empty();
    let one_off = q.from.is_some() || q.until.is_some();
    match (recurring, one_off) {
        (true, false) => recurring_span(q, values, problems),
        (false, true) => one_off_span(q, values, problems),
        (true, true) => {
            problems.push(problem(
                "from",
                "from/until (one-off window) cannot be combined with \
                 start/end/days (recurring window); use one kind per entry",
            ));
            None
        }
        (false, false) => {
            problems.push(problem(
                "start",
                "missing: set start and end (recurring window) \
                 or from and until (one-off window)",
            ));
            None
        }
    }
}

/// Checks the structure of a recurring entry (`start`, `end`, `days`, `timezone`).
fn recurring_span(q: &config::QuietTime, v: Values, problems: &mut Vec<Problem>) -> Option<Span> {
    require_pair(
        q.start.is_some(),
        q.end.is_some(),
        ("start", "end"),
        problems,
    );
    let (start, end) = (v.start?, v.end?);
    if start == end {
        problems.push(problem(
            "end",
            "equals start: a window needs a length (an end before start crosses midnight)",
        ));
        return None;
    }
    Some(Span::Recurring(Recurring {
        tz: v.tz?,
        days: v.days?,
        start,
        end,
    }))
}

/// Checks the structure of a one-off entry (`from`, `until`, no `timezone`).
fn one_off_span(q: &config::QuietTime, v: Values, problems: &mut Vec<Problem>) -> Option<Span> {
    if q.timezone.is_some() {
        problems.push(problem(
            "timezone",
            "not allowed on a one-off window: from and until carry their own offset",
        ));
    }
    require_pair(
        q.from.is_some(),
        q.until.is_some(),
        ("from", "until"),
        problems,
    );
    let (from, until) = (v.from?, v.until?);
    if until <= from {
        problems.push(problem(
            "until",
            format!("must be after from ({})", from.to_rfc3339()),
        ));
        return None;
    }
    Some(Span::OneOff { from, until })
}

/// Records whichever of two keys that must be set together is missing.
fn require_pair(has_a: bool, has_b: bool, (a, b): (&str, &str), problems: &mut Vec<Problem>) {
    for (present, key) in [(has_a, a), (has_b, b)] {
        if !present {
            problems.push(problem(
                key,
                format!("missing: {a} and {b} must be set together"),
            ));
        }
    }
}

/// Parses an IANA time zone name; `None` means UTC.
fn parse_tz(name: Option<&str>, problems: &mut Vec<Problem>) -> Option<Tz> {
    let Some(name) = name else {
        return Some(Tz::UTC);
    };
    let tz = name.parse::<Tz>().ok();
    if tz.is_none() {
        problems.push(problem(
            "timezone",
            format!("unknown time zone {name:?} (use an IANA name such as \"Europe/Berlin\")"),
        ));
    }
    tz
}

/// Parses day names (`mon` .. `sun`, any case); an empty list means every day.
fn parse_days(days: &[String], problems: &mut Vec<Problem>) -> Option<DaySet> {
    if days.is_empty() {
        return Some(DaySet::ALL);
    }
    let mut set = DaySet(0);
    let mut ok = true;
    for (i, d) in days.iter().enumerate() {
        match parse_weekday(d) {
            Some(day) => set.insert(day),
            None => {
                ok = false;
                problems.push(problem(
                    format!("days[{i}]"),
                    format!("{d:?} is not a day (use mon, tue, wed, thu, fri, sat or sun)"),
                ));
            }
        }
    }
    ok.then_some(set)
}

/// Parses a three-letter English day name, case-insensitively.
fn parse_weekday(s: &str) -> Option<Weekday> {
    Some(match s.to_ascii_lowercase().as_str() {
        "mon" => Weekday::Mon,
        "tue" => Weekday::Tue,
        "wed" => Weekday::Wed,
        "thu" => Weekday::Thu,
        "fri" => Weekday::Fri,
        "sat" => Weekday::Sat,
        "sun" => Weekday::Sun,
        _ => return None,
    })
}

/// Parses a strict `HH:MM` (00:00 to 23:59), recording a problem under `key`.
fn parse_time(key: &str, s: &str, problems: &mut Vec<Problem>) -> Option<NaiveTime> {
    let time = parse_hhmm(s);
    if time.is_none() {
        problems.push(problem(
            key,
            format!("{s:?} is not a time of day HH:MM (00:00 to 23:59)"),
        ));
    }
    time
}

/// Parses a strict `HH:MM` (two digits each).
fn parse_hhmm(s: &str) -> Option<NaiveTime> {
    let (h, m) = s.split_once(':')?;
    let two_digits = |p: &str| p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(h) || !two_digits(m) {
        return None;
    }
    NaiveTime::from_hms_opt(h.parse().ok()?, m.parse().ok()?, 0)
}

/// Parses an RFC 3339 instant, recording a problem under `key` if malformed.
fn parse_instant(key: &str, s: &str, problems: &mut Vec<Problem>) -> Option<DateTime<Utc>> {
    match DateTime::parse_from_rfc3339(s) {
        Ok(t) => Some(t.with_timezone(&Utc)),
        Err(e) => {
            problems.push(problem(
                key,
                format!("{s:?} is not an RFC 3339 time such as 2026-05-01T22:00:00+02:00 ({e})"),
            ));
            None
        }
    }
}

/// Problems for entries of `names` that are not among the configured backends.
fn check_backends(names: &[String], backends: &[config::Backend]) -> Vec<Problem> {
    names
        .iter()
        .enumerate()
        .filter(|(_, n)| !backends.iter().any(|b| &b.name == *n))
        .map(|(i, n)| {
            let known: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
            problem(
                format!("backends[{i}]"),
                format!("unknown backend {n:?} (known: {})", known.join(", ")),
            )
        })
        .collect()
}

/// Shorthand for a [`Problem`].
fn problem(key: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        key: key.into(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a test instant: RFC 3339, or `YYYY-MM-DD HH:MM[:SS]` in UTC.
    fn at(s: &str) -> DateTime<Utc> {
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return t.with_timezone(&Utc);
        }
        ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
            .unwrap_or_else(|| panic!("bad test instant {s}"))
            .and_utc()
    }

    /// A config entry with only a name.
    fn entry(name: &str) -> config::QuietTime {
        config::QuietTime {
            name: name.to_string(),
            timezone: None,
            days: Vec::new(),
            start: None,
            end: None,
            from: None,
            until: None,
            backends: Vec::new(),
        }
    }

    /// A recurring window; `tz` "" means no timezone key (UTC).
    fn recurring(tz: &str, days: &[&str], start: &str, end: &str) -> Window {
        let mut q = entry(&format!("{tz} {days:?} {start}-{end}"));
        q.timezone = (!tz.is_empty()).then(|| tz.to_string());
        q.days = days.iter().map(|d| d.to_string()).collect();
        q.start = Some(start.to_string());
        q.end = Some(end.to_string());
        Window::from_config(&q).expect("valid recurring window")
    }

    /// A one-off window.
    fn one_off(name: &str, from: &str, until: &str, backends: &[&str]) -> Window {
        let mut q = entry(name);
        q.from = Some(from.to_string());
        q.until = Some(until.to_string());
        q.backends = backends.iter().map(|b| b.to_string()).collect();
        Window::from_config(&q).expect("valid one-off window")
    }

    /// Checks a (window, instant, expected) table against `contains`.
    fn check_contains(table: &[(&Window, &str, bool)]) {
        for (w, t, expected) in table {
            assert_eq!(w.contains(at(t)), *expected, "{}: contains({t})", w.name());
        }
    }

    /// Checks a (window, after, expected) table against `next_change`.
    fn check_next(table: &[(&Window, &str, Option<&str>)]) {
        for (w, after, expected) in table {
            let got = w.next_change(at(after));
            let name = w.name();
            assert_eq!(got, expected.map(at), "{name}: next_change({after})");
        }
    }

    const BER: &str = "Europe/Berlin";
    const NY: &str = "America/New_York";

    #[test]
    fn dst_contains() {
        let ber = recurring(BER, &[], "01:00", "03:00");
        let ny = recurring(NY, &[], "01:00", "03:00");
        check_contains(&[
            // Berlin spring 2026-03-29: 01:00 CET (00:00Z) .. 03:00 CEST (01:00Z), 1 h.
            (&ber, "2026-03-28 23:59:59", false), // ber spring before
            (&ber, "2026-03-29 00:00", true),     // ber spring start
            (&ber, "2026-03-29 00:59:59", true),  // ber spring last second
            (&ber, "2026-03-29 01:00", false),    // ber spring end
            // Berlin fall 2026-10-25: 01:00 CEST (23:00Z) .. 03:00 CET (02:00Z), 3 h.
            (&ber, "2026-10-24 22:59:59", false), // ber fall before
            (&ber, "2026-10-24 23:00", true),     // ber fall start
            (&ber, "2026-10-25 01:30", true),     // ber fall repeated 02:30
            (&ber, "2026-10-25 01:59:59", true),  // ber fall last second
            (&ber, "2026-10-25 02:00", false),    // ber fall end
            // New York spring 2026-03-08: 01:00 EST (06:00Z) .. 03:00 EDT (07:00Z).
            (&ny, "2026-03-08 05:59:59", false), // ny spring before
            (&ny, "2026-03-08 06:00", true),     // ny spring start
            (&ny, "2026-03-08 06:59:59", true),  // ny spring last second
            (&ny, "2026-03-08 07:00", false),    // ny spring end
            // New York fall 2026-11-01: 01:00 EDT (earlier, 05:00Z) .. 03:00 EST (08:00Z).
            (&ny, "2026-11-01 04:59:59", false), // ny fall before
            (&ny, "2026-11-01 05:00", true),     // ny fall start
            (&ny, "2026-11-01 06:30", true),     // ny fall repeated 01:30
            (&ny, "2026-11-01 07:59:59", true),  // ny fall last second
            (&ny, "2026-11-01 08:00", false),    // ny fall end
            // Normal days.
            (&ber, "2026-06-09 22:59:59", false), // ber summer before
            (&ber, "2026-06-09 23:00", true),     // ber summer start
            (&ber, "2026-06-10 01:00", false),    // ber summer end
            (&ber, "2026-01-15 00:00", true),     // ber winter start
            (&ber, "2026-01-15 01:59:59", true),  // ber winter last second
            (&ber, "2026-01-15 02:00", false),    // ber winter end
            (&ny, "2026-01-15 05:59:59", false),  // ny winter before
            (&ny, "2026-01-15 06:00", true),      // ny winter start
            (&ny, "2026-01-15 08:00", false),     // ny winter end
        ]);
    }

    #[test]
    fn dst_crossing_midnight_contains() {
        let ber = recurring(BER, &["sat"], "22:00", "02:00");
        let ny = recurring(NY, &["sat"], "22:00", "02:00");
        check_contains(&[
            // Sat 22:00 CET (21:00Z); Sunday 02:00 is in the gap -> 03:00 CEST (01:00Z).
            (&ber, "2026-03-28 20:59:59", false), // ber spring before
            (&ber, "2026-03-28 21:00", true),     // ber spring start
            (&ber, "2026-03-29 00:59:59", true),  // ber spring last second
            (&ber, "2026-03-29 01:00", false),    // ber spring end
            (&ber, "2026-03-29 21:00", false),    // ber sunday not a start day
            // Sat 22:00 CEST (20:00Z); Sunday 02:00 is ambiguous -> earlier, CEST (00:00Z).
            (&ber, "2026-10-24 19:59:59", false), // ber fall before
            (&ber, "2026-10-24 20:00", true),     // ber fall start
            (&ber, "2026-10-24 23:59:59", true),  // ber fall last second
            (&ber, "2026-10-25 00:00", false),    // ber fall end
            (&ber, "2026-10-25 01:00", false),    // ber fall second 02:00
            // Sat 22:00 EST (03:00Z); Sunday 02:00 in the gap -> 03:00 EDT (07:00Z).
            (&ny, "2026-03-08 02:59:59", false), // ny spring before
            (&ny, "2026-03-08 03:00", true),     // ny spring start
            (&ny, "2026-03-08 06:59:59", true),  // ny spring last second
            (&ny, "2026-03-08 07:00", false),    // ny spring end
            // Sat 22:00 EDT (02:00Z); Sunday 02:00 exists once, EST (07:00Z).
            (&ny, "2026-11-01 01:59:59", false), // ny fall before
            (&ny, "2026-11-01 02:00", true),     // ny fall start
            (&ny, "2026-11-01 06:59:59", true),  // ny fall last second
            (&ny, "2026-11-01 07:00", false),    // ny fall end
        ]);
    }

    #[test]
    fn dst_gap_and_repeated_hour_contains() {
        let ber_gap = recurring(BER, &[], "02:30", "04:00");
        let ny_gap = recurring(NY, &[], "02:30", "04:00");
        let ber_rep = recurring(BER, &[], "02:15", "02:45");
        let ny_rep = recurring(NY, &[], "01:15", "01:45");
        let in_gap = recurring(BER, &[], "02:10", "02:40");
        let touching = recurring(BER, &[], "02:40", "02:10");
        check_contains(&[
            // Start 02:30 in the gap -> 03:00 CEST = 01:00Z; end 04:00 CEST = 02:00Z.
            (&ber_gap, "2026-03-29 00:59:59", false), // ber gap before
            (&ber_gap, "2026-03-29 01:00", true),     // ber gap start
            (&ber_gap, "2026-03-29 01:59:59", true),  // ber gap last second
            (&ber_gap, "2026-03-29 02:00", false),    // ber gap end
            (&ber_gap, "2026-03-28 01:30", true),     // ber day before gap
            (&ber_gap, "2026-03-28 01:29:59", false), // ber day before gap early
            (&ny_gap, "2026-03-08 06:59:59", false),  // ny gap before
            (&ny_gap, "2026-03-08 07:00", true),      // ny gap start
            (&ny_gap, "2026-03-08 07:59:59", true),   // ny gap last second
            (&ny_gap, "2026-03-08 08:00", false),     // ny gap end
            // Repeated hour: the earlier (summer time) occurrence only.
            (&ber_rep, "2026-10-25 00:14:59", false), // ber rep before
            (&ber_rep, "2026-10-25 00:15", true),     // ber rep start
            (&ber_rep, "2026-10-25 00:44:59", true),  // ber rep last second
            (&ber_rep, "2026-10-25 00:45", false),    // ber rep end
            (&ber_rep, "2026-10-25 01:30", false),    // ber rep second pass
            (&ny_rep, "2026-11-01 05:15", true),      // ny rep start
            (&ny_rep, "2026-11-01 05:44:59", true),   // ny rep last second
            (&ny_rep, "2026-11-01 05:45", false),     // ny rep end
            (&ny_rep, "2026-11-01 06:30", false),     // ny rep second pass
            // Both ends in the gap: that day's occurrence is empty.
            (&in_gap, "2026-03-29 01:00", false), // empty occurrence
            (&in_gap, "2026-03-28 01:20", true),  // empty occurrence, day before
            // End and next start both in the gap: the two occurrences touch.
            (&touching, "2026-03-29 01:00", true), // touching occurrences
            (&touching, "2026-03-29 00:59:59", true), // touching, before
        ]);
    }

    #[test]
    fn dst_next_change() {
        let ber = recurring(BER, &[], "01:00", "03:00");
        let ny = recurring(NY, &[], "01:00", "03:00");
        let ber_sat = recurring(BER, &["sat"], "22:00", "02:00");
        let ny_sat = recurring(NY, &["sat"], "22:00", "02:00");
        let ber_gap = recurring(BER, &[], "02:30", "04:00");
        let ber_rep = recurring(BER, &[], "02:15", "02:45");
        let ny_rep = recurring(NY, &[], "01:15", "01:45");
        let in_gap = recurring(BER, &[], "02:10", "02:40");
        let touching = recurring(BER, &[], "02:40", "02:10");
        check_next(&[
            (&ber, "2026-03-28 12:00", Some("2026-03-29 00:00")), // ber spring
            (&ber, "2026-03-29 00:00", Some("2026-03-29 01:00")), // ber spring start
            (&ber, "2026-03-29 01:00", Some("2026-03-29 23:00")), // ber spring end
            (&ber, "2026-10-24 12:00", Some("2026-10-24 23:00")), // ber fall
            (&ber, "2026-10-25 01:30", Some("2026-10-25 02:00")), // ber fall inside
            (&ber, "2026-10-25 02:00", Some("2026-10-26 00:00")), // ber fall end
            (&ber, "2026-06-10 00:30", Some("2026-06-10 01:00")), // ber normal day
            (&ny, "2026-03-07 12:00", Some("2026-03-08 06:00")),  // ny spring
            (&ny, "2026-03-08 06:00", Some("2026-03-08 07:00")),  // ny spring start
            (&ny, "2026-03-08 07:00", Some("2026-03-09 05:00")),  // ny spring end
            (&ny, "2026-10-31 12:00", Some("2026-11-01 05:00")),  // ny fall
            (&ny, "2026-11-01 05:00", Some("2026-11-01 08:00")),  // ny fall start
            (&ny, "2026-11-01 08:00", Some("2026-11-02 06:00")),  // ny fall end
            (&ber_sat, "2026-03-28 12:00", Some("2026-03-28 21:00")), // ber sat
            (&ber_sat, "2026-03-28 21:00", Some("2026-03-29 01:00")), // ber sat start
            (&ber_sat, "2026-03-29 01:00", Some("2026-04-04 20:00")), // ber sat next week
            (&ber_sat, "2026-10-24 20:00", Some("2026-10-25 00:00")), // ber sat fall
            (&ber_sat, "2026-10-25 00:00", Some("2026-10-31 21:00")), // ber sat fall next
            (&ny_sat, "2026-03-08 03:00", Some("2026-03-08 07:00")), // ny sat spring
            (&ny_sat, "2026-11-01 02:00", Some("2026-11-01 07:00")), // ny sat fall
            (&ber_gap, "2026-03-28 12:00", Some("2026-03-29 01:00")), // ber gap
            (&ber_gap, "2026-03-29 01:00", Some("2026-03-29 02:00")), // ber gap start
            (&ber_rep, "2026-10-25 00:15", Some("2026-10-25 00:45")), // ber rep
            (&ber_rep, "2026-10-25 00:45", Some("2026-10-26 01:15")), // ber rep next
            (&ny_rep, "2026-10-31 12:00", Some("2026-11-01 05:15")), // ny rep
            (&ny_rep, "2026-11-01 05:45", Some("2026-11-02 06:15")), // ny rep next
            (&in_gap, "2026-03-28 12:00", Some("2026-03-30 00:10")), // empty occurrence
            (&touching, "2026-03-29 00:30", Some("2026-03-30 00:10")), // touching
        ]);
    }

    #[test]
    fn utc_windows() {
        let implicit = recurring("", &[], "01:00", "03:00");
        let named = recurring("UTC", &[], "01:00", "03:00");
        check_contains(&[
            (&implicit, "2026-03-29 00:59:59", false), // implicit before
            (&implicit, "2026-03-29 01:00", true),     // implicit start
            (&implicit, "2026-03-29 02:59:59", true),  // implicit last second
            (&implicit, "2026-03-29 03:00", false),    // implicit end
            (&named, "2026-10-25 01:00", true),        // named start
            (&named, "2026-10-25 03:00", false),       // named end
        ]);
        check_next(&[
            (&implicit, "2026-03-29 01:00", Some("2026-03-29 03:00")), // implicit start
            (&implicit, "2026-03-29 03:00", Some("2026-03-30 01:00")), // implicit end
            (&named, "2026-10-24 23:00", Some("2026-10-25 01:00")),    // named
        ]);
    }

    #[test]
    fn duration_follows_local_wall_times() {
        let night = recurring(BER, &["sat"], "22:00", "06:00");
        for (label, start, hours) in [
            ("spring: 7 real hours", "2026-03-28T21:00:00Z", 7),
            ("fall: 9 real hours", "2026-10-24T20:00:00Z", 9),
            ("normal: 8 real hours", "2026-06-13T20:00:00Z", 8),
        ] {
            let start = at(start);
            assert!(night.contains(start), "{label}");
            let end = night.next_change(start).expect("ends");
            assert_eq!(end - start, TimeDelta::hours(hours), "{label}");
        }
    }

    #[test]
    fn midnight_crossing_and_days_filter() {
        // 2026-01-02 is a Friday.
        let fri = recurring("", &["FRI"], "22:00", "02:00");
        let mon_fri = recurring("", &["Mon", "fri"], "22:00", "02:00");
        check_contains(&[
            (&fri, "2026-01-02 22:00", true),        // fri evening
            (&fri, "2026-01-03 01:00", true),        // crossing part on sat counts
            (&fri, "2026-01-03 02:00", false),       // end on sat
            (&fri, "2026-01-03 23:00", false),       // sat evening
            (&fri, "2026-01-02 01:00", false),       // fri morning: thu not listed
            (&fri, "2026-01-02 21:59:59", false),    // fri before start
            (&mon_fri, "2026-01-05 23:00", true),    // mon evening
            (&mon_fri, "2026-01-06 01:59:59", true), // tue morning
            (&mon_fri, "2026-01-06 23:00", false),   // tue evening
        ]);
        check_next(&[
            (&fri, "2026-01-02 23:00", Some("2026-01-03 02:00")), // fri end
            (&fri, "2026-01-03 02:00", Some("2026-01-09 22:00")), // next friday
            (&mon_fri, "2026-01-03 02:00", Some("2026-01-05 22:00")), // mon after fri
        ]);
    }

    #[test]
    fn one_off_windows() {
        let w = one_off(
            "upgrade",
            "2026-05-01T10:00:00+02:00",
            "2026-05-01T12:00:00+02:00",
            &[],
        );
        check_contains(&[
            (&w, "2026-05-01 07:59:59", false), // before
            (&w, "2026-05-01 08:00", true),     // from is inclusive
            (&w, "2026-05-01 09:59:59", true),  // inside
            (&w, "2026-05-01 10:00", false),    // until is exclusive
            (&w, "2027-01-01 00:00", false),    // long after
        ]);
        check_next(&[
            (&w, "2026-04-01 00:00", Some("2026-05-01 08:00")), // before
            (&w, "2026-05-01 08:00", Some("2026-05-01 10:00")), // at from
            (&w, "2026-05-01 09:00", Some("2026-05-01 10:00")), // inside
            (&w, "2026-05-01 10:00", None),                     // at until
            (&w, "2030-01-01 00:00", None),                     // after
        ]);
    }

    /// "primary-upgrade" (primary only, 08:00-10:00Z) and "dc-move" (all
    /// backends, 09:00-11:00Z) on 2026-05-01.
    fn scoped_set() -> QuietTime {
        let day = |h: u32| format!("2026-05-01T{h:02}:00:00Z");
        QuietTime::new(vec![
            one_off("primary-upgrade", &day(8), &day(10), &["primary"]),
            one_off("dc-move", &day(9), &day(11), &[]),
        ])
    }

    #[test]
    fn scoped_windows() {
        let qt = scoped_set();
        let [scoped, all] = &qt.windows[..] else {
            panic!("two windows");
        };
        assert!(scoped.applies_to("primary"));
        assert!(!scoped.applies_to("backup"));
        assert!(all.applies_to("backup"));
        let table: &[(&str, &str, &[&str])] = &[
            ("primary", "2026-05-01 08:30", &["primary-upgrade"]),
            ("backup", "2026-05-01 08:30", &[]),
            (
                "primary",
                "2026-05-01 09:30",
                &["primary-upgrade", "dc-move"],
            ),
            ("backup", "2026-05-01 09:30", &["dc-move"]),
            ("primary", "2026-05-01 11:00", &[]),
        ];
        for (backend, t, expected) in table {
            assert_eq!(qt.active_for(backend, at(t)), *expected, "{backend} at {t}");
        }
    }

    #[test]
    fn quiet_time_set() {
        let qt = scoped_set();
        assert!(!qt.is_empty());
        assert!(QuietTime::default().is_empty());
        assert!(qt.any_active(at("2026-05-01 08:30")));
        assert!(!qt.any_active(at("2026-05-01 11:00")));
        let table = [
            ("2026-05-01 07:00", Some("2026-05-01 08:00")),
            ("2026-05-01 08:30", Some("2026-05-01 09:00")),
            ("2026-05-01 10:00", Some("2026-05-01 11:00")),
            ("2026-05-01 11:00", None),
        ];
        for (after, expected) in table {
            assert_eq!(qt.next_change(at(after)), expected.map(at), "after {after}");
        }
        assert_eq!(QuietTime::default().next_change(at(table[0].0)), None);
    }

    /// Builds an entry named "nightly" from `key=value` pairs separated by spaces
    /// (`days` and `backends` take comma-separated lists).
    fn spec(spec: &str) -> config::QuietTime {
        let mut q = entry("nightly");
        let list = |v: &str| v.split(',').map(str::to_string).collect();
        for pair in spec.split_whitespace() {
            let (key, value) = pair.split_once('=').expect("key=value");
            let v = Some(value.to_string());
            match key {
                "name" => q.name = value.to_string(),
                "timezone" => q.timezone = v,
                "days" => q.days = list(value),
                "start" => q.start = v,
                "end" => q.end = v,
                "from" => q.from = v,
                "until" => q.until = v,
                "backends" => q.backends = list(value),
                _ => panic!("unknown test key {key}"),
            }
        }
        q
    }

    /// Checks a (spec, expected problem keys) table against [`validate`], with
    /// backends "primary" and "backup" configured.
    fn check_validation(table: &[(&str, &[&str])]) {
        let backends = ["primary", "backup"].map(config::Backend::named);
        for (input, expected) in table {
            let problems = validate(&spec(input), &backends);
            let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
            assert_eq!(keys, *expected, "{input}: {problems:?}");
        }
    }

    #[test]
    fn validation_recurring() {
        check_validation(&[
            ("start=01:00 end=03:00", &[]),
            (
                "start=22:00 end=02:00 timezone=Europe/Berlin days=Mon,SUN",
                &[],
            ),
            ("start=01:00 end=03:00 timezone=Mars/Olympus", &["timezone"]),
            ("start=25:00 end=03:00", &["start"]),
            ("start=9:00 end=03:00", &["start"]),
            ("start=1:00pm end=03:00", &["start"]),
            ("start=01:00 end=12:60", &["end"]),
            ("start=05:00 end=05:00", &["end"]),
            ("start=01:00 end=03:00 days=mon,tue,funday", &["days[2]"]),
            ("start=01:00", &["end"]),
            ("end=03:00", &["start"]),
            ("days=mon", &["start", "end"]),
            ("timezone=UTC", &["start"]),
            (
                "start=7 end=03:00 timezone=Nowhere days=xyz",
                &["timezone", "days[0]", "start"],
            ),
        ]);
    }

    #[test]
    fn validation_one_off() {
        const OK: &str = "from=2026-05-01T10:00:00Z until=2026-05-01T12:00:00Z";
        check_validation(&[
            (OK, &[]),
            (
                "from=2026-05-01T12:00:00+02:00 until=2026-05-01T11:00:00Z",
                &[],
            ),
            ("from=yesterday until=2026-05-01T12:00:00Z", &["from"]),
            (
                "from=2026-05-01T10:00:00Z until=2026-05-01T12:00",
                &["until"],
            ),
            (
                "from=2026-05-01T10:00:00Z until=2026-05-01T10:00:00Z",
                &["until"],
            ),
            (
                "from=2026-05-01T10:00:00Z until=2026-05-01T11:00:00+02:00",
                &["until"],
            ),
            ("from=2026-05-01T10:00:00Z", &["until"]),
            ("until=2026-05-01T10:00:00Z", &["from"]),
        ]);
        let with = |extra: &str| format!("{OK} {extra}");
        let (tz, start, days) = (with("timezone=UTC"), with("start=01:00"), with("days=mon"));
        check_validation(&[
            (&tz, &["timezone"]),
            (&start, &["from"]),
            (&days, &["from"]),
        ]);
    }

    #[test]
    fn validation_name_and_backends() {
        check_validation(&[
            ("start=01:00 end=03:00 backends=backup,primary", &[]),
            (
                "start=01:00 end=03:00 backends=primary,nope",
                &["backends[1]"],
            ),
            ("start=01:00 end=03:00 name=", &["name"]),
            (
                "start=01:00 end=03:00 name= backends=x",
                &["name", "backends[0]"],
            ),
        ]);
    }

    /// Turns an entry into a valid one-off window.
    fn make_one_off(q: &mut config::QuietTime) {
        q.start = None;
        q.end = None;
        q.from = Some("2026-05-01T10:00:00+02:00".into());
        q.until = Some("2026-05-01T12:00:00+02:00".into());
    }

    #[test]
    fn problem_messages_and_prefixes() {
        let mut q = entry("x");
        q.timezone = Some("Mars/Olympus".into());
        q.start = Some("01:00".into());
        q.end = Some("03:00".into());
        let problems = Window::from_config(&q).unwrap_err();
        assert!(problems[0].message.contains("Mars/Olympus"), "{problems:?}");

        let mut mixed = entry("mixed");
        mixed.start = Some("01:00".into());
        mixed.end = Some("03:00".into());
        mixed.from = Some("2026-05-01T10:00:00Z".into());
        mixed.until = Some("2026-05-01T12:00:00Z".into());
        let problems = Window::from_config(&mixed).unwrap_err();
        for key in ["from", "until", "start", "end"] {
            assert!(problems[0].message.contains(key), "{problems:?}");
        }

        let mut backwards = entry("backwards");
        make_one_off(&mut backwards);
        backwards.until = Some("2026-05-01T07:00:00Z".into());
        let problems = Window::from_config(&backwards).unwrap_err();
        assert!(
            problems[0].message.contains("must be after from"),
            "{problems:?}"
        );

        let mut scoped = entry("scoped");
        make_one_off(&mut scoped);
        scoped.backends = vec!["not-checked-here".into()];
        assert!(Window::from_config(&scoped).is_ok());

        let keys: Vec<String> = QuietTime::from_config(&[scoped, q, mixed])
            .unwrap_err()
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(keys, ["quiet_time[1].timezone", "quiet_time[2].from"]);
    }

    /// Checks that `contains` is constant from `after` up to `next_change(after)`
    /// and flips there, for every sample instant.
    fn check_consistent(label: &str, w: &Window, samples: impl Iterator<Item = DateTime<Utc>>) {
        let second = TimeDelta::seconds(1);
        for after in samples {
            let c = w
                .next_change(after)
                .unwrap_or_else(|| panic!("{label}: none after {after}"));
            assert!(c > after, "{label}: {c} not after {after}");
            let state = w.contains(after);
            let mid = after + (c - after) / 2;
            for p in [after + second, mid, c - second]
                .into_iter()
                .filter(|&p| p < c)
            {
                assert_eq!(
                    w.contains(p),
                    state,
                    "{label}: at {p}, after {after}, change {c}"
                );
            }
            assert_ne!(
                w.contains(c),
                state,
                "{label}: no change at {c}, after {after}"
            );
        }
    }

    /// Instants from `from` on, `step_minutes` apart, `count` of them.
    fn samples(from: &str, step_minutes: i64, count: i64) -> impl Iterator<Item = DateTime<Utc>> {
        let from = at(from);
        (0..count).map(move |k| from + TimeDelta::minutes(k * step_minutes))
    }

    #[test]
    fn next_change_consistent_in_odd_zones() {
        let zones = [
            BER,
            NY,
            "Pacific/Apia",
            "Australia/Lord_Howe",
            "Pacific/Chatham",
            "Antarctica/Troll",
            "Europe/Dublin",
            "America/St_Johns",
            "Africa/Casablanca",
            "America/Santiago",
        ];
        let spans = [("01:00", "03:00"), ("02:40", "02:10"), ("23:30", "00:30")];
        for tz in zones {
            for (start, end) in spans {
                let w = recurring(tz, &["sat", "sun"], start, end);
                let label = format!("{tz} {start}-{end}");
                check_consistent(&label, &w, samples("2026-01-01T00:00:00Z", 263, 2000));
            }
        }
        // Samoa skipped the whole local day 2011-12-30.
        let apia = recurring("Pacific/Apia", &[], "01:00", "03:00");
        check_consistent("apia 2011", &apia, samples("2011-12-27T00:00:00Z", 17, 600));
        // 2011-12-31 01:00 +14 is 2011-12-30T11:00Z, one real hour after the
        // 2011-12-29 occurrence (01:00 -10 = 11:00Z) ended.
        let after = at("2011-12-29T13:00:00Z");
        assert_eq!(apia.next_change(after), Some(at("2011-12-30T11:00:00Z")));
    }

    #[test]
    fn next_change_consistent_in_every_zone() {
        for tz in chrono_tz::TZ_VARIANTS {
            let name = tz.name();
            for (start, end) in [("02:30", "02:10"), ("01:00", "03:00")] {
                let w = recurring(name, &[], start, end);
                let label = format!("{name} {start}-{end}");
                check_consistent(&label, &w, samples("2026-01-01T00:00:00Z", 17_011, 31));
            }
        }
    }

    #[test]
    fn extreme_instants_do_not_panic() {
        let extremes = [DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC];
        for tz in ["", BER, "Pacific/Kiritimati", "Etc/GMT+12"] {
            let w = recurring(tz, &["sun"], "22:00", "02:00");
            for t in extremes {
                let _ = (w.contains(t), w.next_change(t));
            }
        }
        let w = one_off("x", "2026-05-01T10:00:00Z", "2026-05-01T12:00:00Z", &[]);
        assert_eq!(w.next_change(DateTime::<Utc>::MAX_UTC), None);
        assert!(!w.contains(DateTime::<Utc>::MIN_UTC));
    }
}
