//! Load profiles: when each virtual buyer arrives.
//!
//! A profile is an open-model schedule. It yields intended arrival offsets
//! from the start of the run, independent of how fast the target answers;
//! that independence is what makes the corrected latency honest.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How arrivals are spread over time.
#[derive(Clone, Debug, PartialEq)]
pub enum Profile {
    /// `buyers` arrivals spread evenly over `window` (the flash-sale spike).
    AtOnce { buyers: u64, window: Duration },
    /// Rate rising linearly from 0 to `rate` per second over `duration`.
    Ramp { rate: f64, duration: Duration },
    /// `rate` arrivals per second for `duration`.
    Constant { rate: f64, duration: Duration },
    /// Consecutive constant-rate stages.
    Stages(Vec<(f64, Duration)>),
}

impl Profile {
    /// Number of arrivals the schedule holds.
    pub fn arrivals_total(&self) -> u64 {
        self.arrivals().count() as u64
    }

    /// Planned length of the schedule.
    pub fn duration(&self) -> Duration {
        match self {
            Profile::AtOnce { window, .. } => *window,
            Profile::Ramp { duration, .. } | Profile::Constant { duration, .. } => *duration,
            Profile::Stages(stages) => stages.iter().map(|(_, d)| *d).sum(),
        }
    }

    /// Arrivals per second at the busiest moment; `None` when every buyer
    /// arrives at the same instant.
    pub fn peak_rate(&self) -> Option<f64> {
        match self {
            Profile::AtOnce { buyers, window } => {
                (!window.is_zero()).then(|| *buyers as f64 / window.as_secs_f64())
            }
            Profile::Ramp { rate, .. } | Profile::Constant { rate, .. } => Some(*rate),
            Profile::Stages(stages) => Some(stages.iter().map(|(r, _)| *r).fold(0.0, f64::max)),
        }
    }

    /// Intended arrival offsets, in order.
    pub fn arrivals(&self) -> Box<dyn Iterator<Item = Duration> + Send + '_> {
        match self {
            Profile::AtOnce { buyers, window } => {
                let (buyers, window) = (*buyers, window.as_secs_f64());
                Box::new((0..buyers).map(move |n| secs(window * n as f64 / buyers as f64)))
            }
            Profile::Constant { rate, duration } => Box::new(constant(*rate, *duration, 0.0)),
            Profile::Ramp { rate, duration } => {
                // Arrivals so far at t are rate·t²/(2T); inverting that gives
                // the n-th arrival at sqrt(2Tn/rate).
                let (rate, t) = (*rate, duration.as_secs_f64());
                let total = (rate * t / 2.0).floor() as u64;
                Box::new((0..total).map(move |n| secs((2.0 * t * n as f64 / rate).sqrt())))
            }
            Profile::Stages(stages) => {
                let mut start = 0.0;
                let mut parts: Vec<Box<dyn Iterator<Item = Duration> + Send>> = Vec::new();
                for &(rate, duration) in stages {
                    parts.push(Box::new(constant(rate, duration, start)));
                    start += duration.as_secs_f64();
                }
                Box::new(parts.into_iter().flatten())
            }
        }
    }
}

fn constant(rate: f64, duration: Duration, start: f64) -> impl Iterator<Item = Duration> + Send {
    let total = if rate > 0.0 {
        (rate * duration.as_secs_f64()).floor() as u64
    } else {
        0
    };
    (0..total).map(move |n| secs(start + n as f64 / rate))
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// A profile that could not be parsed; the message says what was expected.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileError(pub String);

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}; expected at-once:BUYERS[/WINDOW], ramp:RATE/DURATION, constant:RATE/DURATION \
             or stages:RATE/DURATION,RATE/DURATION,...",
            self.0
        )
    }
}

impl std::error::Error for ProfileError {}

impl FromStr for Profile {
    type Err = ProfileError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| ProfileError(format!("profile '{s}' has no ':'")))?;
        match kind.trim() {
            "at-once" => {
                let (buyers, window) = match rest.split_once('/') {
                    Some((b, w)) => (b, duration(w)?),
                    None => (rest, Duration::ZERO),
                };
                let buyers =
                    buyers.trim().replace('_', "").parse::<u64>().map_err(|_| {
                        ProfileError(format!("'{buyers}' is not a number of buyers"))
                    })?;
                Ok(Profile::AtOnce { buyers, window })
            }
            "ramp" => {
                let (rate, duration) = rate_duration(rest)?;
                Ok(Profile::Ramp { rate, duration })
            }
            "constant" => {
                let (rate, duration) = rate_duration(rest)?;
                Ok(Profile::Constant { rate, duration })
            }
            "stages" => {
                let stages = rest
                    .split(',')
                    .map(rate_duration)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Profile::Stages(stages))
            }
            other => Err(ProfileError(format!("unknown profile kind '{other}'"))),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |d: &Duration| humantime::format_duration(*d).to_string();
        match self {
            Profile::AtOnce { buyers, window } => write!(f, "at-once:{buyers}/{}", d(window)),
            Profile::Ramp { rate, duration } => write!(f, "ramp:{rate}/{}", d(duration)),
            Profile::Constant { rate, duration } => write!(f, "constant:{rate}/{}", d(duration)),
            Profile::Stages(stages) => {
                let parts: Vec<String> = stages
                    .iter()
                    .map(|(r, du)| format!("{r}/{}", d(du)))
                    .collect();
                write!(f, "stages:{}", parts.join(","))
            }
        }
    }
}

fn rate_duration(s: &str) -> Result<(f64, Duration), ProfileError> {
    let (rate, dur) = s
        .split_once('/')
        .ok_or_else(|| ProfileError(format!("'{s}' is not RATE/DURATION")))?;
    let rate = rate
        .trim()
        .replace('_', "")
        .parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r >= 0.0)
        .ok_or_else(|| ProfileError(format!("'{rate}' is not a rate (requests per second)")))?;
    Ok((rate, duration(dur)?))
}

/// Parses `1s`, `500ms`, `2m`; a bare number means seconds.
pub fn duration(s: &str) -> Result<Duration, ProfileError> {
    let s = s.trim();
    if let Ok(n) = s.parse::<f64>() {
        if n.is_finite() && n >= 0.0 {
            return Ok(Duration::from_secs_f64(n));
        }
    }
    humantime::parse_duration(s).map_err(|e| ProfileError(format!("'{s}' is not a duration: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_once_spreads_buyers_over_the_window() {
        let p: Profile = "at-once:4/1s".parse().unwrap();
        let a: Vec<_> = p.arrivals().collect();
        assert_eq!(a.len(), 4);
        assert_eq!(a[0], Duration::ZERO);
        assert_eq!(a[2], Duration::from_millis(500));
        let p: Profile = "at-once:50_000".parse().unwrap();
        assert!(p.arrivals().all(|t| t == Duration::ZERO));
        assert_eq!(p.arrivals_total(), 50_000);
    }

    #[test]
    fn ramp_grows_to_the_rate() {
        let p: Profile = "ramp:100/10s".parse().unwrap();
        let a: Vec<_> = p.arrivals().collect();
        assert_eq!(a.len(), 500);
        // Later arrivals are closer together than early ones.
        let early = a[1] - a[0];
        let late = a[499] - a[498];
        assert!(late < early);
        assert!(*a.last().unwrap() < Duration::from_secs(10));
    }

    #[test]
    fn stages_follow_each_other() {
        let p: Profile = "stages:10/1s,0/1s,5/2s".parse().unwrap();
        let a: Vec<_> = p.arrivals().collect();
        assert_eq!(a.len(), 20);
        assert_eq!(a[10], Duration::from_secs(2));
        assert_eq!(p.duration(), Duration::from_secs(4));
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn bad_profiles_say_why() {
        let e = "burst:10".parse::<Profile>().unwrap_err();
        assert!(e.to_string().contains("unknown profile kind 'burst'"));
        let e = "constant:fast/1s".parse::<Profile>().unwrap_err();
        assert!(e.to_string().contains("'fast' is not a rate"));
        let e = "constant:10/soon".parse::<Profile>().unwrap_err();
        assert!(e.to_string().contains("'soon' is not a duration"));
    }

    #[test]
    fn display_parses_back() {
        for s in [
            "at-once:100/1s",
            "ramp:50/10s",
            "constant:5/2s",
            "stages:1/1s,2/500ms",
        ] {
            let p: Profile = s.parse().unwrap();
            assert_eq!(p.to_string().parse::<Profile>().unwrap(), p);
        }
    }
}
