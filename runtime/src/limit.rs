//! Rate limits keyed by a string (a client id, a username, a source address), in bounded
//! memory, with the time passed in so tests move it instead of sleeping.
//!
//! A [`Quota`] of `count` per `window` allows `count` requests at once and then one every
//! `window / count`: the generic cell rate algorithm (GCRA, the token bucket written as one
//! timestamp per key — the *theoretical arrival time* `tat` at which the key is back to its
//! whole budget minus one). A key whose `tat` has passed has its whole budget again and holds
//! no information, so it is dropped whenever room is needed.
//!
//! At most `max_keys` keys are tracked, so a flood of distinct keys cannot exhaust memory.
//! When a new key finds the map full, idle keys are dropped first; if that is not enough, the
//! least-constrained tenth (the smallest `tat`: closest to idle) goes. A flood of fresh keys
//! therefore evicts its own keys before a key that is being limited, and the scan it costs is
//! paid once per tenth of the map, not on every insertion.
//!
//! Written here rather than taken from a crate: the services need the time as a parameter
//! (their [`Clock`](crate::clock::Clock)), a hard cap on tracked keys with this eviction
//! order, and a way to count only failures ([`RateLimiter::check`] then
//! [`RateLimiter::charge`]), which together are less code than adapting one.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer};

/// Keys are cut to this many bytes (at a character boundary), so a long key costs no more
/// memory than a short one.
pub const MAX_KEY_BYTES: usize = 128;

/// How many requests a key may make: `count` at once, then one every `window / count`.
/// `count` 0 is no limit. Written `"<count>/<window>"` (`"10/5m"`, `"5000/1s"`) or `"off"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub count: u32,
    pub window: Duration,
}

impl Quota {
    /// No limit.
    pub const OFF: Quota = Quota {
        count: 0,
        window: Duration::ZERO,
    };

    /// `count` per `window`; a `count` of 0 (or a zero window) is no limit.
    pub const fn new(count: u32, window: Duration) -> Quota {
        Quota { count, window }
    }

    /// Whether this quota limits nothing.
    pub fn is_off(&self) -> bool {
        self.count == 0 || self.window.is_zero()
    }

    /// The time one request costs: `window / count`, at least a nanosecond.
    fn interval(&self) -> u64 {
        (nanos(self.window) / u64::from(self.count.max(1))).max(1)
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_off() {
            return f.write_str("off");
        }
        write!(
            f,
            "{}/{}",
            self.count,
            crate::config::format_duration(self.window)
        )
    }
}

impl std::str::FromStr for Quota {
    type Err = String;

    fn from_str(s: &str) -> Result<Quota, String> {
        let s = s.trim();
        if s == "off" || s == "0" {
            return Ok(Quota::OFF);
        }
        let invalid =
            || format!("invalid rate `{s}`: expected <count>/<duration> (e.g. 10/5m) or off");
        let (count, window) = s.split_once('/').ok_or_else(invalid)?;
        let count: u32 = count.trim().parse().map_err(|_| invalid())?;
        let window = crate::config::parse_duration(window)?;
        Ok(Quota::new(count, window))
    }
}

impl<'de> Deserialize<'de> for Quota {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Quota, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A refusal: the key is over its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// How long until the key may make one more request.
    pub retry_after: Duration,
}

impl Limited {
    /// `retry_after` in whole seconds, rounded up and at least 1: the `Retry-After` value.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

/// Rate limits per key, for one [`Quota`]; see the module documentation.
pub struct RateLimiter {
    quota: Quota,
    max_keys: usize,
    /// Each limited key's theoretical arrival time, in nanoseconds since the Unix epoch.
    tats: Mutex<HashMap<Box<str>, u64>>,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The keys are usernames and addresses: not for a debug print.
        f.debug_struct("RateLimiter")
            .field("quota", &self.quota)
            .field("max_keys", &self.max_keys)
            .field("tracked", &self.tracked())
            .finish()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn epoch_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, nanos)
}

/// `key` cut to [`MAX_KEY_BYTES`] at a character boundary.
fn cut(key: &str) -> &str {
    if key.len() <= MAX_KEY_BYTES {
        return key;
    }
    let mut end = MAX_KEY_BYTES;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    &key[..end]
}

impl RateLimiter {
    /// A limiter for `quota` that tracks at most `max_keys` keys (at least 16).
    pub fn new(quota: Quota, max_keys: usize) -> RateLimiter {
        RateLimiter {
            quota,
            max_keys: max_keys.max(16),
            tats: Mutex::new(HashMap::new()),
        }
    }

    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Takes one request from `key`'s budget, or says how long to wait if there is none
    /// (taking nothing).
    pub fn acquire(&self, key: &str, now: SystemTime) -> Result<(), Limited> {
        self.update(key, now, true, false)
    }

    /// Whether `key` has a request left, taking nothing: with [`RateLimiter::charge`] after
    /// a failure, it limits failures only.
    pub fn check(&self, key: &str, now: SystemTime) -> Result<(), Limited> {
        self.update(key, now, false, false)
    }

    /// Takes one request from `key`'s budget even if there is none left, so attempts that
    /// passed [`RateLimiter::check`] together and then failed all count (the key waits
    /// longer for each).
    pub fn charge(&self, key: &str, now: SystemTime) {
        let _ = self.update(key, now, true, true);
    }

    /// How many keys are tracked.
    pub fn tracked(&self) -> usize {
        self.tats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn update(&self, key: &str, now: SystemTime, take: bool, force: bool) -> Result<(), Limited> {
        if self.quota.is_off() {
            return Ok(());
        }
        let key = cut(key);
        let now = epoch_nanos(now);
        let interval = self.quota.interval();
        // The burst: `count` requests at once.
        let tolerance = nanos(self.quota.window).saturating_sub(interval);
        // A poisoned lock only means a panic elsewhere mid-update; the map is still valid.
        let mut tats = self.tats.lock().unwrap_or_else(PoisonError::into_inner);
        let tat = tats.get(key).copied().unwrap_or(now).max(now);
        let allowed = tat <= now.saturating_add(tolerance);
        if !allowed && !force {
            return Err(Limited {
                retry_after: Duration::from_nanos(tat - now.saturating_add(tolerance)),
            });
        }
        if take {
            let next = tat.saturating_add(interval);
            match tats.get_mut(key) {
                Some(stored) => *stored = next,
                None => {
                    if tats.len() >= self.max_keys {
                        evict(&mut tats, now, self.max_keys);
                    }
                    tats.insert(key.into(), next);
                }
            }
        }
        Ok(())
    }
}

/// Makes room in a full map: drops idle keys, then, if the map is still over nine tenths
/// full, the least-constrained tenth.
fn evict(tats: &mut HashMap<Box<str>, u64>, now: u64, max_keys: usize) {
    tats.retain(|_, tat| *tat > now);
    if tats.len() < max_keys - max_keys / 10 {
        return;
    }
    let mut values: Vec<u64> = tats.values().copied().collect();
    let nth = values.len() / 10;
    let (_, threshold, _) = values.select_nth_unstable(nth);
    let threshold = *threshold;
    tats.retain(|_, tat| *tat > threshold);
}

/// The key of a source address: an IPv4 address as is, an IPv6 address by its /64 prefix
/// (one host usually holds a whole /64), an IPv4-mapped IPv6 address as the IPv4 one.
pub fn source_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    fn limiter(quota: &str) -> (RateLimiter, ManualClock) {
        (
            RateLimiter::new(quota.parse().unwrap(), 1000),
            ManualClock::at_unix(1_700_000_000),
        )
    }

    #[test]
    fn a_quota_allows_its_count_at_once_then_one_per_interval() {
        let (limiter, clock) = limiter("3/3s");
        for _ in 0..3 {
            limiter.acquire("alice", clock.now()).unwrap();
        }
        let limited = limiter.acquire("alice", clock.now()).unwrap_err();
        assert_eq!(limited.retry_after, Duration::from_secs(1));
        assert_eq!(limited.retry_after_secs(), 1);
        // Other keys have their own budget.
        limiter.acquire("bob", clock.now()).unwrap();
        clock.advance(Duration::from_millis(999));
        assert!(limiter.acquire("alice", clock.now()).is_err());
        clock.advance(Duration::from_millis(1));
        limiter.acquire("alice", clock.now()).unwrap();
        assert!(limiter.acquire("alice", clock.now()).is_err());
        // A whole window later the whole budget is back, and no more.
        clock.advance(Duration::from_secs(30));
        for _ in 0..3 {
            limiter.acquire("alice", clock.now()).unwrap();
        }
        assert!(limiter.acquire("alice", clock.now()).is_err());
    }

    #[test]
    fn a_refused_request_takes_nothing() {
        let (limiter, clock) = limiter("2/2s");
        limiter.acquire("k", clock.now()).unwrap();
        limiter.acquire("k", clock.now()).unwrap();
        for _ in 0..100 {
            assert!(limiter.acquire("k", clock.now()).is_err());
        }
        // Hammering while limited did not push the wait out.
        clock.advance(Duration::from_secs(1));
        limiter.acquire("k", clock.now()).unwrap();
    }

    #[test]
    fn check_takes_nothing_and_charge_counts_failures_past_the_limit() {
        let (limiter, clock) = limiter("2/10s");
        for _ in 0..10 {
            limiter.check("eve", clock.now()).unwrap();
        }
        limiter.charge("eve", clock.now());
        limiter.check("eve", clock.now()).unwrap();
        limiter.charge("eve", clock.now());
        let limited = limiter.check("eve", clock.now()).unwrap_err();
        assert_eq!(limited.retry_after, Duration::from_secs(5));
        // Two more failures that passed the check before the limit was reached still count:
        // each pushes the wait out by an interval.
        limiter.charge("eve", clock.now());
        limiter.charge("eve", clock.now());
        let limited = limiter.check("eve", clock.now()).unwrap_err();
        assert_eq!(limited.retry_after, Duration::from_secs(15));
    }

    #[test]
    fn an_off_quota_limits_nothing_and_tracks_nothing() {
        let limiter = RateLimiter::new(Quota::OFF, 16);
        let now = SystemTime::now();
        for _ in 0..1000 {
            limiter.acquire("k", now).unwrap();
            limiter.charge("k", now);
        }
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_within_the_cap_and_keeps_the_limited_key() {
        let limiter = RateLimiter::new("2/1m".parse().unwrap(), 1000);
        let clock = ManualClock::at_unix(1_700_000_000);
        limiter.acquire("alice", clock.now()).unwrap();
        limiter.acquire("alice", clock.now()).unwrap();
        assert!(limiter.acquire("alice", clock.now()).is_err());
        for i in 0..100_000 {
            limiter.charge(&format!("flood-{i}"), clock.now());
            assert!(limiter.tracked() <= 1000);
        }
        // Each flood key is less constrained than alice, so alice was never evicted.
        assert!(limiter.acquire("alice", clock.now()).is_err());
    }

    #[test]
    fn idle_keys_are_dropped_first_when_room_is_needed() {
        let limiter = RateLimiter::new("1/1s".parse().unwrap(), 16);
        let clock = ManualClock::at_unix(1_700_000_000);
        for i in 0..16 {
            limiter.acquire(&format!("old-{i}"), clock.now()).unwrap();
        }
        assert_eq!(limiter.tracked(), 16);
        clock.advance(Duration::from_secs(2));
        limiter.acquire("new", clock.now()).unwrap();
        assert_eq!(limiter.tracked(), 1);
    }

    #[test]
    fn long_keys_are_cut() {
        let (limiter, clock) = limiter("1/1m");
        let long = "é".repeat(200);
        limiter.acquire(&long, clock.now()).unwrap();
        // Another key with the same first 128 bytes is the same key.
        let other = format!("{}x", "é".repeat(64));
        assert!(limiter.acquire(&other, clock.now()).is_err());
        assert!(cut(&long).len() <= MAX_KEY_BYTES);
    }

    #[test]
    fn a_clock_set_back_does_not_refill() {
        let (limiter, clock) = limiter("1/10s");
        limiter.acquire("k", clock.now()).unwrap();
        clock.set(clock.now() - Duration::from_secs(3600));
        assert!(limiter.acquire("k", clock.now()).is_err());
    }

    #[test]
    fn quotas_are_written_as_count_per_window() {
        assert_eq!(
            "10/5m".parse::<Quota>().unwrap(),
            Quota::new(10, Duration::from_secs(300))
        );
        assert!("off".parse::<Quota>().unwrap().is_off());
        assert!("0/1s".parse::<Quota>().unwrap().is_off());
        assert_eq!("5000/1s".parse::<Quota>().unwrap().to_string(), "5000/1s");
        assert_eq!(Quota::OFF.to_string(), "off");
        for bad in ["10", "x/1s", "10/", "10/5", "-1/1s", "10/0s"] {
            assert!(bad.parse::<Quota>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sources_are_keyed_by_address_or_ipv6_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(source_key(ip("192.0.2.7")), "192.0.2.7");
        assert_eq!(source_key(ip("::ffff:192.0.2.7")), "192.0.2.7");
        assert_eq!(
            source_key(ip("2001:db8:1:2:aaaa::1")),
            source_key(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_eq!(source_key(ip("2001:db8:1:2::1")), "2001:db8:1:2::/64");
    }
}
