//! A daily time window in local time, `HH:MM-HH:MM` (`--reboot-window`).
//!
//! The start is inside, the end is not: `02:00-05:00` holds 02:00 to
//! 04:59:59. A window whose end is before its start wraps midnight
//! (`23:00-01:00`); one whose end equals its start is refused, since it
//! could mean all day or never.

use std::fmt;

use chrono::{NaiveTime, Timelike};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Minutes after midnight.
    start: u32,
    end: u32,
}

impl Window {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("invalid window {text:?}: expected HH:MM-HH:MM, as 02:00-05:00");
        let (a, b) = text.trim().split_once('-').ok_or_else(bad)?;
        let minutes = |t: &str| {
            let (h, m) = t.trim().split_once(':')?;
            let all_digits =
                |s: &str| (1..=2).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_digit());
            if !all_digits(h) || m.len() != 2 || !all_digits(m) {
                return None;
            }
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let (start, end) = (minutes(a).ok_or_else(bad)?, minutes(b).ok_or_else(bad)?);
        if start == end {
            return Err(format!(
                "invalid window {text:?}: it starts where it ends (leave the window out to reboot at any time)"
            ));
        }
        Ok(Window { start, end })
    }

    /// Whether the local time `t` is inside.
    pub fn contains(&self, t: NaiveTime) -> bool {
        let m = t.hour() * 60 + t.minute();
        if self.start < self.end {
            self.start <= m && m < self.end
        } else {
            m >= self.start || m < self.end
        }
    }

    /// Whether the window holds this machine's local time now.
    pub fn contains_now(&self) -> bool {
        self.contains(chrono::Local::now().time())
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (s, e) = (self.start, self.end);
        write!(f, "{:02}:{:02}-{:02}:{:02}", s / 60, s % 60, e / 60, e % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 30).unwrap()
    }

    #[test]
    fn a_window_holds_its_start_not_its_end() {
        let w = Window::parse("02:00-05:00").unwrap();
        assert_eq!(w.to_string(), "02:00-05:00");
        assert!(!w.contains(at(1, 59)));
        assert!(w.contains(at(2, 0)));
        assert!(w.contains(at(4, 59)));
        assert!(!w.contains(at(5, 0)));
        assert!(!w.contains(at(14, 0)));
    }

    #[test]
    fn a_window_may_wrap_midnight() {
        let w = Window::parse("23:30-1:15").unwrap();
        assert_eq!(w.to_string(), "23:30-01:15");
        for (h, m) in [(23, 30), (23, 59), (0, 0), (1, 14)] {
            assert!(w.contains(at(h, m)), "{h}:{m}");
        }
        for (h, m) in [(23, 29), (1, 15), (12, 0)] {
            assert!(!w.contains(at(h, m)), "{h}:{m}");
        }
    }

    #[test]
    fn bad_windows_are_refused() {
        for text in [
            "",
            "02:00",
            "2-5",
            "24:00-05:00",
            "02:60-03:00",
            "02:00-02:00",
            "a:bc-01:00",
            "02:000-03:00",
            "+2:00-03:00",
        ] {
            assert!(Window::parse(text).is_err(), "{text:?}");
        }
    }
}
