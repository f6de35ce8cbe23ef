//! Seat usage thresholds per key (L10): notify when usage reaches 90 % and 100 % of the seats,
//! and when attempted usage (seats held plus devices refused for lack of a seat) reaches
//! 110 %. Each level is notified once when crossed upwards and re-armed when usage falls back
//! below it.

/// A usage level worth a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Below 90 %.
    Normal = 0,
    /// 90 % of the seats are used.
    Ninety = 90,
    /// Every seat is used.
    Full = 100,
    /// Devices wanting a seat reach 110 % of the seats.
    Over = 110,
}

impl Level {
    /// From the stored number.
    pub fn from_percent(p: i64) -> Level {
        match p {
            110.. => Level::Over,
            100..=109 => Level::Full,
            90..=99 => Level::Ninety,
            _ => Level::Normal,
        }
    }
}

/// The level for these counts. `used` includes seats leased out; `wanting` are devices
/// refused because the key was full.
pub fn level(seats: u32, used: u32, wanting: u32) -> Level {
    if seats == 0 {
        return Level::Normal;
    }
    let s = u64::from(seats);
    let attempted = u64::from(used) + u64::from(wanting);
    if attempted * 100 >= s * 110 {
        Level::Over
    } else if u64::from(used) >= s {
        Level::Full
    } else if u64::from(used) * 100 >= s * 90 {
        Level::Ninety
    } else {
        Level::Normal
    }
}

/// Levels to notify when usage moves from `previous` to `current` (upward crossings only).
pub fn crossings(previous: Level, current: Level) -> Vec<Level> {
    [Level::Ninety, Level::Full, Level::Over]
        .into_iter()
        .filter(|l| *l > previous && *l <= current)
        .collect()
}

/// The notification for a crossed level: its kind and the sentence for the log (L10, L14).
pub fn notice(
    level: Level,
    key_id: &str,
    seats: u32,
    used: u32,
    wanting: u32,
) -> (&'static str, String) {
    match level {
        Level::Ninety => (
            "usage-90",
            format!("key {key_id}: 90 % of its seats are used ({used} of {seats})"),
        ),
        Level::Full => (
            "usage-100",
            format!("key {key_id}: every seat is used ({used} of {seats})"),
        ),
        Level::Over | Level::Normal => (
            "usage-110",
            format!(
                "key {key_id}: devices wanting a seat reach 110 % ({used} used + {wanting} refused, {seats} seats)"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l10_levels_and_crossings() {
        assert_eq!(level(10, 8, 0), Level::Normal);
        assert_eq!(level(10, 9, 0), Level::Ninety);
        assert_eq!(level(10, 10, 0), Level::Full);
        assert_eq!(level(10, 10, 1), Level::Over);
        assert_eq!(level(40, 40, 3), Level::Full, "43/40 is 107.5 %");
        assert_eq!(level(40, 40, 4), Level::Over);
        assert_eq!(
            crossings(Level::Normal, Level::Over),
            vec![Level::Ninety, Level::Full, Level::Over]
        );
        assert_eq!(crossings(Level::Full, Level::Full), vec![]);
        assert_eq!(
            crossings(Level::Over, Level::Ninety),
            vec![],
            "falling re-arms, never notifies"
        );
        assert_eq!(crossings(Level::Ninety, Level::Full), vec![Level::Full]);
        assert_eq!(Level::from_percent(100), Level::Full);
    }

    #[test]
    fn l10_notice_kinds_and_wording() {
        assert_eq!(
            notice(Level::Ninety, "K", 10, 9, 0),
            (
                "usage-90",
                "key K: 90 % of its seats are used (9 of 10)".into()
            )
        );
        assert_eq!(notice(Level::Full, "K", 10, 10, 0).0, "usage-100");
        let (kind, text) = notice(Level::Over, "K", 10, 10, 1);
        assert_eq!(kind, "usage-110");
        assert!(text.contains("10 used + 1 refused, 10 seats"), "{text}");
    }
}
