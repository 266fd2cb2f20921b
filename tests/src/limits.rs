//! The physical limits a benchmark's figures are compared with, measured in the same run on
//! the same machine: ring's Ed25519 sign and verify on one core, SHA-256 throughput on one
//! core, and the disk's durable-write rate (a 4 KiB write and `fdatasync`, one at a time, in
//! the directory the services write to). A figure's share of its limit says how much of the
//! machine the code leaves unused; a target below a limit (a latency under one fsync) cannot
//! be met by any code that keeps the same durability.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Limits {
    pub ed25519_sign_per_sec: f64,
    pub ed25519_verify_per_sec: f64,
    pub sha256_mib_per_sec: f64,
    pub fsyncs_per_sec: f64,
    /// Latency of one 4 KiB write + fdatasync: p50, p99, max (µs).
    pub fsync_us: [u64; 3],
}

impl Limits {
    /// Measures every limit, each for about `each` (the fsync one for at least 200 syncs),
    /// writing its scratch file in `dir`.
    pub fn measure(dir: &Path, each: Duration) -> Limits {
        let (fsyncs_per_sec, fsync_us) = fsync_rate(dir, each);
        Limits {
            ed25519_sign_per_sec: ed25519_sign_per_sec(each),
            ed25519_verify_per_sec: ed25519_verify_per_sec(each),
            sha256_mib_per_sec: sha256_mib_per_sec(each),
            fsyncs_per_sec,
            fsync_us,
        }
    }

    /// The limits as a report's JSON object.
    pub fn json(&self) -> Value {
        json!({
            "ed25519_sign_per_sec_one_core": self.ed25519_sign_per_sec.round(),
            "ed25519_verify_per_sec_one_core": self.ed25519_verify_per_sec.round(),
            "sha256_mib_per_sec_one_core": self.sha256_mib_per_sec.round(),
            "fsync_per_sec_serial": self.fsyncs_per_sec.round(),
            "fsync_p50_ms": self.fsync_us[0] as f64 / 1000.0,
            "fsync_p99_ms": self.fsync_us[1] as f64 / 1000.0,
            "fsync_max_ms": self.fsync_us[2] as f64 / 1000.0,
        })
    }

    /// One line for a benchmark's table.
    pub fn line(&self) -> String {
        format!(
            "limits (one core): Ed25519 sign {:.0}/s, verify {:.0}/s, SHA-256 {:.0} MiB/s; \
             disk: {:.0} fsyncs/s serial, fsync p50 {:.2} ms p99 {:.2} ms",
            self.ed25519_sign_per_sec,
            self.ed25519_verify_per_sec,
            self.sha256_mib_per_sec,
            self.fsyncs_per_sec,
            self.fsync_us[0] as f64 / 1000.0,
            self.fsync_us[1] as f64 / 1000.0,
        )
    }
}

/// Runs `batch` (which does `per_batch` operations) until `duration` has passed; per second.
fn rate(duration: Duration, per_batch: u64, mut batch: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        batch();
        n += per_batch;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn ed25519_pair() -> ring::signature::Ed25519KeyPair {
    use ring::signature::Ed25519KeyPair;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
}

/// ring's Ed25519 sign of a token-sized message, one core.
pub fn ed25519_sign_per_sec(duration: Duration) -> f64 {
    let pair = ed25519_pair();
    let message = [7u8; 300];
    rate(duration, 100, || {
        for _ in 0..100 {
            std::hint::black_box(pair.sign(std::hint::black_box(&message)));
        }
    })
}

/// ring's Ed25519 verify of a token-sized message, one core.
pub fn ed25519_verify_per_sec(duration: Duration) -> f64 {
    use ring::signature::{ED25519, KeyPair as _, UnparsedPublicKey};
    let pair = ed25519_pair();
    let message = [7u8; 300];
    let signature = pair.sign(&message);
    let public = UnparsedPublicKey::new(&ED25519, pair.public_key().as_ref().to_vec());
    rate(duration, 100, || {
        for _ in 0..100 {
            public
                .verify(std::hint::black_box(&message), signature.as_ref())
                .unwrap();
        }
    })
}

/// ring's SHA-256 over 64 KiB buffers, one core, in MiB/s.
pub fn sha256_mib_per_sec(duration: Duration) -> f64 {
    let buffer = vec![0x5au8; 64 * 1024];
    let per_sec = rate(duration, 1, || {
        std::hint::black_box(ring::digest::digest(
            &ring::digest::SHA256,
            std::hint::black_box(&buffer),
        ));
    });
    per_sec * 64.0 / 1024.0
}

/// 4 KiB written and `fdatasync`ed, one at a time, in `dir`: syncs per second and the
/// latency quantiles (p50, p99, max) in µs.
pub fn fsync_rate(dir: &Path, duration: Duration) -> (f64, [u64; 3]) {
    let path = dir.join(".trias-fsync-probe");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = [0xa5u8; 4096];
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration || n < 200 {
        file.write_all(&block).unwrap();
        let t = Instant::now();
        file.sync_data().unwrap();
        latency
            .record(
                u64::try_from(t.elapsed().as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1),
            )
            .unwrap();
        n += 1;
    }
    let per_sec = n as f64 / start.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    (
        per_sec,
        [
            latency.value_at_quantile(0.5),
            latency.value_at_quantile(0.99),
            latency.max(),
        ],
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_limit_is_measured() {
        let dir = tempfile::tempdir().unwrap();
        let limits = super::Limits::measure(dir.path(), std::time::Duration::from_millis(20));
        assert!(limits.ed25519_sign_per_sec > 0.0 && limits.ed25519_verify_per_sec > 0.0);
        assert!(limits.sha256_mib_per_sec > 0.0 && limits.fsyncs_per_sec > 0.0);
        assert!(
            limits.fsync_us[0] <= limits.fsync_us[1] && limits.fsync_us[1] <= limits.fsync_us[2]
        );
        assert!(!dir.path().join(".trias-fsync-probe").exists());
    }
}
