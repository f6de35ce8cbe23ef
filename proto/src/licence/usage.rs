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
}
