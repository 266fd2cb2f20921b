//! Identifiers that sort by creation time: audit event ids, token ids (`jti`) and refresh
//! families.
//!
//! An id is 128 bits in lowercase hex, as a random id is: the first 48 bits are the
//! creation time in unix milliseconds (big-endian, as in a version 7 UUID), the other 80 come
//! from the operating system's CSPRNG. The ids a service makes in one millisecond are as
//! unguessable as 80 random bits; the time prefix tells nothing the record does not already
//! say (an event's time, a token's `iat`).
//!
//! Why the time comes first: every store that indexes these ids (the auditor's log, the
//! issuer's token families, each outbox) keeps them in a B-tree. Random keys land on a random
//! page of the index for every insert, so each commit rewrites pages all over the index;
//! time-ordered keys land on the few pages at its right edge.

use std::time::{SystemTime, UNIX_EPOCH};

use data_encoding::HEXLOWER;
use ring::rand::{SecureRandom, SystemRandom};

/// The id's length in characters.
pub const LEN: usize = 32;

/// A new time-ordered id for an object made at `now`.
///
/// Fails only when the operating system's random generator does.
pub fn time_ordered(rng: &SystemRandom, now: SystemTime) -> Result<String, RandomFailed> {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes[6..]).map_err(|_| RandomFailed)?;
    let millis = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    // The low 48 bits: enough until the year 10889.
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    Ok(HEXLOWER.encode(&bytes))
}

/// The operating system's random generator failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomFailed;

impl std::fmt::Display for RandomFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the system random generator failed")
    }
}

impl std::error::Error for RandomFailed {}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use super::*;

    fn at(millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(millis)
    }

    #[test]
    fn the_time_comes_first_in_milliseconds() {
        let rng = SystemRandom::new();
        let id = time_ordered(&rng, at(0x0123_4567_89ab)).unwrap();
        assert_eq!(id.len(), LEN);
        assert!(id.starts_with("0123456789ab"), "{id}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }

    #[test]
    fn later_ids_sort_after_earlier_ones() {
        let rng = SystemRandom::new();
        let mut previous = time_ordered(&rng, at(1_767_225_600_000)).unwrap();
        for step in 1..1_000 {
            let id = time_ordered(&rng, at(1_767_225_600_000 + step)).unwrap();
            assert!(id > previous, "{id} after {previous}");
            previous = id;
        }
    }

    #[test]
    fn ids_of_one_millisecond_differ_in_their_random_part() {
        let rng = SystemRandom::new();
        let ids: HashSet<String> = (0..10_000)
            .map(|_| time_ordered(&rng, at(1_767_225_600_000)).unwrap())
            .collect();
        assert_eq!(ids.len(), 10_000);
        // The random part is not a counter: the ids do not share their next hex digits.
        let prefixes: HashSet<&str> = ids.iter().map(|id| &id[12..16]).collect();
        assert!(prefixes.len() > 5_000, "{} distinct", prefixes.len());
    }

    #[test]
    fn a_time_before_the_epoch_counts_as_the_epoch() {
        let rng = SystemRandom::new();
        let id = time_ordered(&rng, UNIX_EPOCH - Duration::from_secs(1)).unwrap();
        assert!(id.starts_with("000000000000"), "{id}");
    }
}
