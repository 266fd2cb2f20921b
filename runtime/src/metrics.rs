//! Prometheus metrics without a metrics crate: a small per-service [`Registry`] of counters,
//! labelled counter families, gauges and fixed-bucket histograms, rendered in the text
//! exposition format 0.0.4, and [`serve`], the plain-HTTP `GET /metrics` listener.
//!
//! Updates are atomic operations (a family first finds its child under a read lock), so the
//! hot paths — thousands of checks a second — never wait on a scrape. Label values must come
//! from closed sets (reason codes, grant types, configured producer names), never from a
//! request, so every family stays small.
//!
//! Each service owns its registry: several services in one process (the tests) never mix.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::net::TcpListener;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Latency buckets in seconds, from half a millisecond to ten seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A monotonically increasing count.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (an `f64`, stored as its bits).
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Observations counted into fixed buckets (upper bounds, ascending), with their sum.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    bounds: Vec<f64>,
    /// One count per bound (not cumulative), then the count above the last bound.
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_bits: AtomicU64,
}

impl Histogram {
    /// A histogram over `bounds`; unsorted or non-finite bounds are sorted and dropped.
    pub fn new(bounds: &[f64]) -> Self {
        let mut bounds: Vec<f64> = bounds.iter().copied().filter(|b| b.is_finite()).collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram(Arc::new(HistogramInner {
            bounds,
            buckets,
            count: AtomicU64::new(0),
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }))
    }

    pub fn observe(&self, value: f64) {
        let inner = &self.0;
        let slot = inner.bounds.partition_point(|bound| *bound < value);
        if let Some(bucket) = inner.buckets.get(slot) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        inner.count.fetch_add(1, Ordering::Relaxed);
        let _ = inner
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }

    pub fn sum(&self) -> f64 {
        f64::from_bits(self.0.sum_bits.load(Ordering::Relaxed))
    }
}

/// Metrics of one kind told apart by label values (e.g. `grant_type`).
#[derive(Debug, Clone)]
pub struct Family<M> {
    inner: Arc<FamilyInner<M>>,
}

#[derive(Debug)]
struct FamilyInner<M> {
    labels: Vec<&'static str>,
    /// Few children (closed label sets), so a linear scan beats hashing the values.
    children: RwLock<Vec<(Vec<String>, M)>>,
}

impl<M: Clone + Default> Family<M> {
    pub fn new(labels: &[&'static str]) -> Self {
        Family {
            inner: Arc::new(FamilyInner {
                labels: labels.to_vec(),
                children: RwLock::new(Vec::new()),
            }),
        }
    }

    /// The metric for these label values (one per label name, in order), created at first use.
    pub fn with(&self, values: &[&str]) -> M {
        let same = |stored: &[String]| stored.iter().map(String::as_str).eq(values.iter().copied());
        if let Ok(children) = self.inner.children.read()
            && let Some((_, metric)) = children.iter().find(|(v, _)| same(v))
        {
            return metric.clone();
        }
        let mut children = match self.inner.children.write() {
            Ok(children) => children,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((_, metric)) = children.iter().find(|(v, _)| same(v)) {
            return metric.clone();
        }
        let metric = M::default();
        let values = values.iter().map(|v| (*v).to_owned()).collect();
        children.push((values, metric.clone()));
        metric
    }

    fn children(&self) -> Vec<(Vec<String>, M)> {
        match self.inner.children.read() {
            Ok(children) => children.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

#[derive(Debug, Clone)]
enum Metric {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
    Counters(Family<Counter>),
    Gauges(Family<Gauge>),
}

#[derive(Debug)]
struct Entry {
    name: String,
    help: String,
    metric: Metric,
}

/// A service's metrics, in registration order. Cheap to clone; registration happens at
/// start-up, updates go straight to the metric handles it returns.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    entries: Arc<Mutex<Vec<Entry>>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    fn register(&self, name: &str, help: &str, metric: Metric) {
        let mut entries = match self.entries.lock() {
            Ok(entries) => entries,
            Err(poisoned) => poisoned.into_inner(),
        };
        entries.push(Entry {
            name: name.to_owned(),
            help: help.to_owned(),
            metric,
        });
    }

    pub fn counter(&self, name: &str, help: &str) -> Counter {
        let counter = Counter::default();
        self.register(name, help, Metric::Counter(counter.clone()));
        counter
    }

    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        let gauge = Gauge::default();
        self.register(name, help, Metric::Gauge(gauge.clone()));
        gauge
    }

    pub fn histogram(&self, name: &str, help: &str, bounds: &[f64]) -> Histogram {
        let histogram = Histogram::new(bounds);
        self.register(name, help, Metric::Histogram(histogram.clone()));
        histogram
    }

    pub fn counter_family(
        &self,
        name: &str,
        help: &str,
        labels: &[&'static str],
    ) -> Family<Counter> {
        let family = Family::new(labels);
        self.register(name, help, Metric::Counters(family.clone()));
        family
    }

    /// Registers a family made beforehand (by a component that counts before the
    /// service's registry exists).
    pub fn add_counter_family(&self, name: &str, help: &str, family: &Family<Counter>) {
        self.register(name, help, Metric::Counters(family.clone()));
    }

    pub fn gauge_family(&self, name: &str, help: &str, labels: &[&'static str]) -> Family<Gauge> {
        let family = Family::new(labels);
        self.register(name, help, Metric::Gauges(family.clone()));
        family
    }

    /// `trias_build_info{service,version} 1`, which every service exports.
    pub fn build_info(&self, service: &str) {
        self.gauge_family(
            "trias_build_info",
            "The service and its version; always 1.",
            &["service", "version"],
        )
        .with(&[service, env!("CARGO_PKG_VERSION")])
        .set(1.0);
    }

    /// Every metric in the text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let entries = match self.entries.lock() {
            Ok(entries) => entries,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut out = String::new();
        for entry in entries.iter() {
            let kind = match entry.metric {
                Metric::Counter(_) | Metric::Counters(_) => "counter",
                Metric::Gauge(_) | Metric::Gauges(_) => "gauge",
                Metric::Histogram(_) => "histogram",
            };
            let name = &entry.name;
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&entry.help));
            let _ = writeln!(out, "# TYPE {name} {kind}");
            match &entry.metric {
                Metric::Counter(c) => sample(&mut out, name, &[], c.get() as f64),
                Metric::Gauge(g) => sample(&mut out, name, &[], g.get()),
                Metric::Histogram(h) => render_histogram(&mut out, name, h),
                Metric::Counters(family) => {
                    for (values, c) in family.children() {
                        let labels = pairs(&family.inner.labels, &values);
                        sample(&mut out, name, &labels, c.get() as f64);
                    }
                }
                Metric::Gauges(family) => {
                    for (values, g) in family.children() {
                        let labels = pairs(&family.inner.labels, &values);
                        sample(&mut out, name, &labels, g.get());
                    }
                }
            }
        }
        out
    }
}

fn pairs<'a>(names: &[&'static str], values: &'a [String]) -> Vec<(&'static str, &'a str)> {
    names
        .iter()
        .copied()
        .zip(values.iter().map(String::as_str))
        .collect()
}

fn render_histogram(out: &mut String, name: &str, histogram: &Histogram) {
    let inner = &histogram.0;
    let mut cumulative = 0u64;
    let bucket = format!("{name}_bucket");
    for (bound, count) in inner.bounds.iter().zip(&inner.buckets) {
        cumulative += count.load(Ordering::Relaxed);
        sample(out, &bucket, &[("le", &number(*bound))], cumulative as f64);
    }
    // The count, not the sum of the buckets: an observation racing the scrape may be in one
    // and not yet the other, and `+Inf` must equal `_count`.
    let count = histogram.count();
    sample(out, &bucket, &[("le", "+Inf")], count as f64);
    sample(out, &format!("{name}_sum"), &[], histogram.sum());
    sample(out, &format!("{name}_count"), &[], count as f64);
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape_label(value));
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&number(value));
    out.push('\n');
}

/// A sample value as Prometheus writes it: `+Inf`, `-Inf`, `NaN`, or the shortest decimal.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value == f64::INFINITY {
        "+Inf".to_owned()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        value.to_string()
    }
}

fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Runs before each scrape to bring gauges up to date (an outbox's depth, say).
pub type Refresh = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Serves `GET /metrics` (and nothing else) on `listener` over plain HTTP until `shutdown`
/// completes; `refresh` runs before each rendering.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    refresh: Option<Refresh>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::header;
    use axum::response::IntoResponse;

    let handler = move || {
        let registry = registry.clone();
        let refresh = refresh.clone();
        async move {
            if let Some(refresh) = refresh {
                refresh().await;
            }
            ([(header::CONTENT_TYPE, CONTENT_TYPE)], registry.render()).into_response()
        }
    };
    let router = axum::Router::new().route("/metrics", axum::routing::get(handler));
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The gauges every audit producer exports about its outbox.
#[derive(Debug, Clone)]
pub struct OutboxGauges {
    depth: Gauge,
    oldest: Gauge,
}

impl OutboxGauges {
    pub fn register(registry: &Registry) -> Self {
        OutboxGauges {
            depth: registry.gauge(
                "trias_outbox_depth",
                "Audit events recorded in the outbox and not yet acknowledged by the auditor.",
            ),
            oldest: registry.gauge(
                "trias_outbox_oldest_unshipped_seconds",
                "Age of the oldest audit event not yet acknowledged by the auditor (0 if none).",
            ),
        }
    }

    /// Reads the outbox's depth and oldest unshipped event (a scrape's refresh).
    pub async fn refresh(&self, outbox: &crate::outbox::Outbox, now: std::time::SystemTime) {
        match outbox.depth().await {
            Ok(depth) => self.depth.set(depth as f64),
            Err(error) => tracing::warn!(%error, "cannot read the outbox depth"),
        }
        match outbox.oldest_unshipped().await {
            Ok(Some(time)) => {
                let age = now.duration_since(time).unwrap_or_default();
                self.oldest.set(age.as_secs_f64());
            }
            Ok(None) => self.oldest.set(0.0),
            Err(error) => tracing::warn!(%error, "cannot read the outbox's oldest event"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn counters_and_families_render_with_help_and_type() {
        let registry = Registry::new();
        let total = registry.counter("things_total", "Things.");
        let by_kind = registry.counter_family("kinds_total", "Things by kind.", &["kind"]);
        total.add(3);
        by_kind.with(&["a"]).inc();
        by_kind.with(&["b"]).add(2);
        by_kind.with(&["a"]).inc();
        assert_eq!(
            registry.render(),
            "# HELP things_total Things.\n# TYPE things_total counter\nthings_total 3\n\
             # HELP kinds_total Things by kind.\n# TYPE kinds_total counter\n\
             kinds_total{kind=\"a\"} 2\nkinds_total{kind=\"b\"} 2\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let registry = Registry::new();
        let family = registry.counter_family("x_total", "A \\ help\nline.", &["l", "m"]);
        family.with(&["quote\" back\\slash", "new\nline"]).inc();
        let text = registry.render();
        assert!(
            text.contains("# HELP x_total A \\\\ help\\nline.\n"),
            "{text}"
        );
        assert!(
            text.contains("x_total{l=\"quote\\\" back\\\\slash\",m=\"new\\nline\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let registry = Registry::new();
        let h = registry.histogram("lat_seconds", "Latency.", &[0.5, 0.125, 1.0]);
        // Binary fractions, so the sum is exact.
        for value in [0.0625, 0.125, 0.25, 2.0] {
            h.observe(value);
        }
        let text = registry.render();
        let expected = "# HELP lat_seconds Latency.\n# TYPE lat_seconds histogram\n\
            lat_seconds_bucket{le=\"0.125\"} 2\nlat_seconds_bucket{le=\"0.5\"} 3\n\
            lat_seconds_bucket{le=\"1\"} 3\nlat_seconds_bucket{le=\"+Inf\"} 4\n\
            lat_seconds_sum 2.4375\nlat_seconds_count 4\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn gauges_and_build_info() {
        let registry = Registry::new();
        registry.gauge("depth", "Depth.").set(7.0);
        registry.build_info("issuer");
        let text = registry.render();
        assert!(text.contains("depth 7\n"), "{text}");
        assert!(
            text.contains(&format!(
                "trias_build_info{{service=\"issuer\",version=\"{}\"}} 1\n",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
    }

    #[test]
    fn family_children_are_shared_across_threads() {
        let family: Family<Counter> = Family::new(&["k"]);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        family.with(&["v"]).inc();
                    }
                });
            }
        });
        assert_eq!(family.with(&["v"]).get(), 4000);
    }
}
