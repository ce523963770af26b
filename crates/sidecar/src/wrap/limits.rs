//! A model provider's limit as the agent CLIs word it, and the reset time in their words: the
//! CLI prints it in the machine's local time zone, which is ours too (`run-agent` runs beside it).
//!
//! Claude Code: `You've hit your session limit · resets 9:08pm (UTC)`, `... · resets Dec 10,
//! 8:08pm (UTC)`; `API Error: Server is temporarily limiting requests ...`. Codex: `You’ve hit
//! your usage limit. Try again at 9:14 PM.`, `... Try again at Dec 10th, 2026 8:14 PM.`,
//! `exceeded retry limit, last status: 429 Too Many Requests`, `rate limit exceeded: ...`.

use chrono::{DateTime, Datelike, Local, NaiveDate, NaiveTime, TimeZone};

/// Whether a CLI's error text says a limit stopped it (not a failure of the work).
pub fn is_limit_message(text: &str) -> bool {
    let t = text.to_lowercase().replace('\u{2019}', "'");
    [
        "you've hit your",
        "usage limit",
        "rate limit",
        "temporarily limiting requests",
        "429 too many requests",
        "(429)",
        "overloaded",
        "out of usage credits",
    ]
    .iter()
    .any(|p| t.contains(p))
}

/// The reset time of Claude Code's usage-limit text (`· resets <when> (<zone>)`), epoch ms.
pub fn claude_reset(text: &str, now: DateTime<Local>) -> Option<u64> {
    let rest = &text[text.find("resets ")? + "resets ".len()..];
    let when = rest.split(" (").next()?;
    when_to_ms(when, now)
}

/// The reset time of Codex's usage-limit text (`Try again at <when>.`), epoch ms.
pub fn codex_reset(text: &str, now: DateTime<Local>) -> Option<u64> {
    let lower = text.to_lowercase();
    let at = lower.find("again at ")? + "again at ".len();
    let when = text[at..].trim_end().trim_end_matches('.');
    let when = when.split(". ").next()?;
    when_to_ms(when, now)
}

/// `9pm`, `9:08pm`, `9:14 PM`, `Dec 10, 8:08pm`, `Dec 10th, 2026 8:14 PM` in local time; a time
/// alone is the next one to come, a date without a year this year's (or next year's when past).
fn when_to_ms(when: &str, now: DateTime<Local>) -> Option<u64> {
    let lower = when.to_lowercase().replace(',', " ");
    let mut words: Vec<String> = lower.split_whitespace().map(str::to_string).collect();
    // `8:14 pm` → `8:14pm`
    if let Some(i) = words.iter().position(|w| w == "am" || w == "pm") {
        if i > 0 {
            let suffix = words.remove(i);
            words[i - 1].push_str(&suffix);
        }
    }
    let time_word = words.pop()?;
    let time = parse_clock(&time_word)?;
    let date = match words.as_slice() {
        [] => None,
        [month, day] => Some((month.clone(), day.clone(), None)),
        [month, day, year] => Some((month.clone(), day.clone(), Some(year.parse::<i32>().ok()?))),
        _ => return None,
    };
    let local = |d: NaiveDate| Local.from_local_datetime(&d.and_time(time)).earliest();
    let at = match date {
        None => {
            let today = local(now.date_naive())?;
            if today > now {
                today
            } else {
                local(now.date_naive().succ_opt()?)?
            }
        }
        Some((month, day, year)) => {
            let month = month_number(&month)?;
            let day: u32 = day.trim_end_matches(|c: char| c.is_ascii_alphabetic()).parse().ok()?;
            let this_year = local(NaiveDate::from_ymd_opt(year.unwrap_or(now.year()), month, day)?)?;
            match year {
                None if this_year < now => local(NaiveDate::from_ymd_opt(now.year() + 1, month, day)?)?,
                _ => this_year,
            }
        }
    };
    u64::try_from(at.timestamp_millis()).ok()
}

/// `9pm`, `9:08pm`, `12am`, `21:08`.
fn parse_clock(w: &str) -> Option<NaiveTime> {
    let (digits, pm) = match (w.strip_suffix("pm"), w.strip_suffix("am")) {
        (Some(d), _) => (d, Some(true)),
        (None, Some(d)) => (d, Some(false)),
        (None, None) => (w, None),
    };
    let (h, m) = match digits.split_once(':') {
        Some((h, m)) => (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?),
        None => (digits.parse::<u32>().ok()?, 0),
    };
    let h = match pm {
        Some(pm) if (1..=12).contains(&h) => h % 12 + if pm { 12 } else { 0 },
        Some(_) => return None,
        None => h,
    };
    NaiveTime::from_hms_opt(h, m, 0)
}

fn month_number(m: &str) -> Option<u32> {
    let names = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
    names.iter().position(|n| m.starts_with(n)).map(|i| i as u32 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Local> {
        Local.with_ymd_and_hms(y, mo, d, h, mi, 0).single().unwrap()
    }

    fn ms(t: DateTime<Local>) -> Option<u64> {
        Some(t.timestamp_millis() as u64)
    }

    #[test]
    fn the_clis_words_for_a_reset_are_read_in_local_time() {
        let now = at(2026, 12, 7, 20, 8);
        let claude = |t: &str| claude_reset(t, now);
        assert_eq!(claude("You've hit your session limit · resets 9:08pm (UTC)"), ms(at(2026, 12, 7, 21, 8)));
        assert_eq!(claude("You've hit your session limit · resets 9pm (UTC)"), ms(at(2026, 12, 7, 21, 0)));
        // A time already past today is tomorrow's.
        assert_eq!(claude("You've hit your Opus limit · resets 7:30am (UTC)"), ms(at(2026, 12, 8, 7, 30)));
        assert_eq!(claude("You've hit your weekly limit · resets Dec 10, 8:08pm (UTC)"), ms(at(2026, 12, 10, 20, 8)));
        assert_eq!(claude("You've hit your weekly limit · resets Jan 2, 8am (UTC)"), ms(at(2027, 1, 2, 8, 0)));
        assert_eq!(claude("You've hit your session limit"), None);
        let codex = |t: &str| codex_reset(t, now);
        assert_eq!(codex("You’ve hit your usage limit. Try again at 9:14 PM."), ms(at(2026, 12, 7, 21, 14)));
        assert_eq!(
            codex("You’ve hit your usage limit. Try again at Dec 10th, 2026 8:14 PM."),
            ms(at(2026, 12, 10, 20, 14))
        );
        assert_eq!(
            codex("You’ve hit your usage limit. Upgrade to Pro (https://x), visit https://y or try again at 9:14 PM."),
            ms(at(2026, 12, 7, 21, 14))
        );
        assert_eq!(codex("You’ve hit your usage limit. Try again later."), None);
        for junk in ["resets 25:99pm (UTC)", "resets Foo 40, 9pm (UTC)", "resets  (UTC)", "resets 13pm (UTC)"] {
            assert_eq!(claude(junk), None, "{junk}");
        }
    }

    #[test]
    fn limits_are_told_from_other_errors() {
        for limit in [
            "API Error: Request rejected (429) · Scripted rate limit",
            "You've hit your session limit · resets 9pm (UTC)",
            "API Error: Server is temporarily limiting requests (not your usage limit) · x",
            "exceeded retry limit, last status: 429 Too Many Requests",
            "You’ve hit your usage limit. Try again later.",
            "rate limit exceeded: Scripted failure",
        ] {
            assert!(is_limit_message(limit), "{limit}");
        }
        for other in ["Invalid API key", "tests fail", "We’re currently experiencing high demand"] {
            assert!(!is_limit_message(other), "{other}");
        }
    }
}
