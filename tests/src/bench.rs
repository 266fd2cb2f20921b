//! What the benchmarks in `tests/benches` share: settings from `TRIAS_BENCH_*` variables,
//! runtimes with named threads, latency histograms, the closed-loop driver, and CPU time per
//! group of threads read from `/proc`. A benchmark runs the service and its load generator in
//! one process, so the thread names are what lets its report say which of them used the cores.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::runtime::{Handle, Runtime};
use trias_runtime::outbox::Outbox;

/// Linux reports per-thread CPU time in clock ticks of 1/100 s on every common platform.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// The value of an environment variable, or `default` when it is unset; digits may be grouped
/// with `_` (`10_000_000`). A value that does not parse stops the benchmark, since a silently
/// ignored setting would mislabel the figures.
pub fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text} is not a valid value")),
        Err(_) => default,
    }
}

/// The scenarios `variable` names (comma-separated), or every one of `known` in its order.
pub fn scenarios_from_env(variable: &str, known: &[&str]) -> Vec<String> {
    let scenarios = std::env::var(variable)
        .unwrap_or_else(|_| known.join(","))
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>();
    for name in &scenarios {
        assert!(
            known.contains(&name.as_str()),
            "unknown scenario {name} in {variable}"
        );
    }
    scenarios
}

/// Where a benchmark writes its JSON report: `TRIAS_BENCH_OUTPUT`, else `file` in the
/// workspace's target directory (benchmarks run with the package directory as the working
/// directory, so a relative default would land inside `tests/`).
pub fn report_path(file: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    std::env::var_os("TRIAS_BENCH_OUTPUT").map_or_else(|| target.join(file), PathBuf::from)
}

/// Writes a JSON report, creating its directory if need be.
pub fn write_report(path: &Path, report: &Value) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, serde_json::to_string_pretty(report).unwrap() + "\n").unwrap();
}

/// A multi-threaded runtime whose threads (workers and blocking pool) are all called `name`,
/// so [`CpuProbe`] can tell them apart from the other runtimes in the process.
pub fn runtime(name: &str, threads: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

/// A latency histogram in microseconds, from 1 µs to a minute, three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

/// A duration in whole microseconds, at least one (the histograms start at 1).
pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Microseconds as milliseconds with two decimals, for the printed tables.
pub fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// p50, p99 and p99.9 of a microsecond histogram, as milliseconds for the printed tables.
pub fn quantiles_ms(h: &Histogram<u64>) -> [String; 3] {
    [0.5, 0.99, 0.999].map(|q| ms(h.value_at_quantile(q)))
}

pub fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

/// The percentiles every report gives, in microseconds.
pub fn latency_json(h: &Histogram<u64>) -> Value {
    json!({
        "p50": h.value_at_quantile(0.5),
        "p99": h.value_at_quantile(0.99),
        "p99_9": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": round(h.mean(), 1),
    })
}

/// The peak resident set size of this process so far (`VmHWM`), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    status_kib("self", "VmHWM:")
}

/// A size field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`) in KiB; `pid` may be `self`.
pub fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The CPU time a process (all its threads) has used so far, in seconds.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, ticks) = stat_ticks(&stat)?;
    Some(ticks as f64 / CLOCK_TICKS_PER_SEC)
}

/// The name and CPU ticks (utime + stime) of a `/proc/…/stat` line.
fn stat_ticks(stat: &str) -> Option<(String, u64)> {
    // `pid (comm) state ppid …`: the name may hold spaces, so split after the last ')'.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are the 14th and 15th fields; the 3rd (state) is index 0 here.
    Some((stat[open + 1..close].to_owned(), field(11) + field(12)))
}

/// `concurrency` handles on `connections` mTLS connections (one HTTP/2 connection each) to
/// `addr`, whose server must be identity `server`, as identity `client`: the workers
/// multiplex over the connections.
pub async fn channels(
    addr: std::net::SocketAddr,
    server: &str,
    client: &str,
    connections: usize,
    concurrency: usize,
) -> Vec<tonic::transport::Channel> {
    let transport = crate::transport(client);
    let mut channels = Vec::new();
    for _ in 0..connections.max(1) {
        let endpoint = transport
            .endpoint(
                &format!("http://{addr}"),
                &trias_runtime::tls::identity_of(server),
            )
            .unwrap();
        channels.push(endpoint.tcp_nodelay(true).connect().await.unwrap());
    }
    (0..concurrency)
        .map(|i| channels[i % channels.len()].clone())
        .collect()
}

// ----- the closed loop -----

/// One closed-loop client: sends a request, waits for the answer, sends the next.
pub trait Call: Send + 'static {
    /// One request; `Err` says what went wrong, for the report.
    fn call(&mut self) -> impl Future<Output = Result<(), String>> + Send;
}

/// When a worker's results count.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub measure_from: Instant,
    pub end: Instant,
}

impl Window {
    /// A window that opens `warmup` from now and stays open for `measure`.
    pub fn after(warmup: Duration, measure: Duration) -> Window {
        let start = Instant::now();
        Window {
            measure_from: start + warmup,
            end: start + warmup + measure,
        }
    }

    pub fn measured(&self) -> Duration {
        self.end - self.measure_from
    }
}

/// What one or more workers saw.
#[derive(Debug)]
pub struct WorkerResult {
    pub latencies_us: Histogram<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Default for WorkerResult {
    fn default() -> Self {
        WorkerResult {
            latencies_us: histogram(),
            errors: 0,
            first_error: None,
        }
    }
}

impl WorkerResult {
    /// Counts a failure, keeping the first one's message.
    pub fn error(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }

    pub fn merge(&mut self, other: WorkerResult) {
        self.latencies_us.add(&other.latencies_us).unwrap();
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// The closed loop: requests that start in the measurement window and finish before its end
/// are measured; an error in any phase counts.
pub async fn run_worker<W: Call>(mut worker: W, window: Window) -> WorkerResult {
    let mut result = WorkerResult::default();
    loop {
        let started = Instant::now();
        if started >= window.end {
            break;
        }
        let outcome = worker.call().await;
        let finished = Instant::now();
        match outcome {
            Ok(()) => {
                if started >= window.measure_from && finished <= window.end {
                    result
                        .latencies_us
                        .saturating_record(micros(finished - started));
                }
            }
            Err(error) => result.error(error),
        }
    }
    result
}

/// What a closed-loop run measured.
#[derive(Debug)]
pub struct Measured {
    pub result: WorkerResult,
    pub cpu: CpuSplit,
    /// Commits of the outbox under test during the measured window.
    pub commits: u64,
    pub seconds: f64,
}

impl Measured {
    /// Operations measured per second.
    pub fn per_sec(&self) -> f64 {
        self.result.latencies_us.len() as f64 / self.seconds
    }
}

/// Runs `workers` on `runtime` through `warmup` and then `measure`; CPU time and the outbox's
/// commits are read at the edges of the measured window.
pub async fn closed_loop<W: Call>(
    runtime: &Handle,
    workers: Vec<W>,
    warmup: Duration,
    measure: Duration,
    outbox: &Outbox,
    groups: &ThreadGroups,
) -> Measured {
    let window = Window::after(warmup, measure);
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|worker| runtime.spawn(run_worker(worker, window)))
        .collect();
    tokio::time::sleep_until(window.measure_from.into()).await;
    let (commits_before, before) = (outbox.commits(), CpuProbe::read());
    tokio::time::sleep_until(window.end.into()).await;
    let (commits_after, after) = (outbox.commits(), CpuProbe::read());
    let mut result = WorkerResult::default();
    for task in tasks {
        result.merge(task.await.unwrap());
    }
    Measured {
        result,
        cpu: after.split_since(&before, groups),
        commits: commits_after - commits_before,
        seconds: window.measured().as_secs_f64(),
    }
}

/// The open loop: requests start at `rate` a second on schedule, whether or not earlier ones
/// have finished, each on a clone of the next worker; a latency runs from the scheduled start,
/// so a stall delays every request behind it in the figures too (no coordinated omission).
/// CPU time and the outbox's commits are read at the edges of the measured window.
pub async fn open_loop<W: Call + Clone>(
    runtime: &Handle,
    workers: Vec<W>,
    rate: f64,
    warmup: Duration,
    measure: Duration,
    outbox: &Outbox,
    groups: &ThreadGroups,
) -> Measured {
    let window = Window::after(warmup, measure);
    let start = Instant::now();
    let (tx, mut rx) =
        tokio::sync::mpsc::unbounded_channel::<(Instant, Instant, Result<(), String>)>();
    let collector = runtime.spawn(async move {
        let mut result = WorkerResult::default();
        while let Some((scheduled, finished, outcome)) = rx.recv().await {
            match outcome {
                Ok(()) if scheduled >= window.measure_from && scheduled < window.end => result
                    .latencies_us
                    .saturating_record(micros(finished - scheduled)),
                Ok(()) => {}
                Err(error) => result.error(error),
            }
        }
        result
    });
    let mut probes = (None, None);
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let now = Instant::now();
        if probes.0.is_none() && now >= window.measure_from {
            probes.0 = Some((outbox.commits(), CpuProbe::read()));
        }
        if now >= window.end {
            probes.1 = Some((outbox.commits(), CpuProbe::read()));
            break;
        }
        let due = ((now - start).as_secs_f64() * rate) as u64;
        while sent < due {
            let scheduled = start + Duration::from_secs_f64(sent as f64 / rate);
            let mut worker = workers[(sent % workers.len() as u64) as usize].clone();
            let tx = tx.clone();
            runtime.spawn(async move {
                let outcome = worker.call().await;
                let _ = tx.send((scheduled, Instant::now(), outcome));
            });
            sent += 1;
        }
    }
    drop(tx);
    let result = collector.await.unwrap();
    let (Some((commits_before, before)), Some((commits_after, after))) = probes else {
        unreachable!("the loop reads both probes before it ends")
    };
    Measured {
        result,
        cpu: after.split_since(&before, groups),
        commits: commits_after - commits_before,
        seconds: window.measured().as_secs_f64(),
    }
}

// ----- CPU time by thread group -----

/// How threads are grouped in a report: the first `(name prefix, group)` whose prefix starts
/// the thread's name decides; the rest are `other`.
pub type ThreadGroups = [(&'static str, &'static str)];

/// What one thread has used so far.
#[derive(Debug, Clone)]
struct ThreadSample {
    name: String,
    /// User plus system CPU time, in clock ticks.
    ticks: u64,
    /// Voluntary plus involuntary context switches.
    switches: u64,
}

/// Every thread of this process, by thread id.
fn thread_samples() -> BTreeMap<u32, ThreadSample> {
    let mut samples = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return samples;
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let Some((name, ticks)) = stat_ticks(&stat) else {
            continue;
        };
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let switches = status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        samples.insert(
            tid,
            ThreadSample {
                name,
                ticks,
                switches,
            },
        );
    }
    samples
}

/// Busy (non-idle, non-iowait) CPU ticks of the whole machine, from `/proc/stat`.
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …: everything but idle and iowait.
    fields
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum()
}

/// A reading of every thread's CPU time and of the machine's busy time.
#[derive(Debug, Clone)]
pub struct CpuProbe {
    threads: BTreeMap<u32, ThreadSample>,
    machine_busy_ticks: u64,
    at: Instant,
}

impl CpuProbe {
    pub fn read() -> CpuProbe {
        CpuProbe {
            threads: thread_samples(),
            machine_busy_ticks: machine_busy_ticks(),
            at: Instant::now(),
        }
    }

    /// What each group of threads used between `before` and this reading.
    pub fn split_since(&self, before: &CpuProbe, groups: &ThreadGroups) -> CpuSplit {
        let wall = (self.at - before.at).as_secs_f64().max(1e-9);
        let mut usage: BTreeMap<&'static str, Usage> = BTreeMap::new();
        for (tid, sample) in &self.threads {
            let (ticks, switches) = before
                .threads
                .get(tid)
                .map_or((0, 0), |b| (b.ticks, b.switches));
            let group = groups
                .iter()
                .find(|(prefix, _)| sample.name.starts_with(prefix))
                .map_or("other", |(_, group)| group);
            let entry = usage.entry(group).or_default();
            entry.cores += sample.ticks.saturating_sub(ticks) as f64 / CLOCK_TICKS_PER_SEC / wall;
            entry.switches_per_sec += sample.switches.saturating_sub(switches) as f64 / wall;
        }
        let ours: f64 = usage.values().map(|u| u.cores).sum();
        let busy = self
            .machine_busy_ticks
            .saturating_sub(before.machine_busy_ticks) as f64
            / CLOCK_TICKS_PER_SEC
            / wall;
        CpuSplit {
            usage,
            foreign_cores: (busy - ours).max(0.0),
        }
    }
}

/// What a group of threads used during a window.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// CPU seconds per second of wall time.
    pub cores: f64,
    /// Context switches per second.
    pub switches_per_sec: f64,
}

/// CPU use of this process by group of threads over a window.
#[derive(Debug, Clone, Default)]
pub struct CpuSplit {
    pub usage: BTreeMap<&'static str, Usage>,
    /// CPU cores busy outside this process during the window (other programs, the kernel's
    /// own threads): noise the figures should be read against.
    pub foreign_cores: f64,
}

impl CpuSplit {
    pub fn cores(&self, group: &str) -> f64 {
        self.usage.get(group).map_or(0.0, |u| u.cores)
    }

    pub fn total_cores(&self) -> f64 {
        self.usage.values().map(|u| u.cores).sum()
    }

    /// CPU time the whole process spent per operation at `per_sec` operations a second.
    pub fn us_per_op(&self, per_sec: f64) -> f64 {
        self.total_cores() * 1e6 / per_sec.max(1.0)
    }

    /// CPU time one group spent per operation at `per_sec` operations a second.
    pub fn group_us_per_op(&self, group: &str, per_sec: f64) -> f64 {
        self.cores(group) * 1e6 / per_sec.max(1.0)
    }

    pub fn switches_per_op(&self, per_sec: f64) -> f64 {
        let switches: f64 = self.usage.values().map(|u| u.switches_per_sec).sum();
        switches / per_sec.max(1.0)
    }

    /// Cores used by each group, for a JSON report.
    pub fn cores_json(&self) -> Value {
        self.usage
            .iter()
            .map(|(k, u)| ((*k).to_owned(), json!(round(u.cores, 2))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}
