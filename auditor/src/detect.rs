//! The detectors: they look at each batch of newly logged entries and raise alerts, which the
//! sequencer logs in the same transaction as the batch (so an alert is in the Merkle tree and
//! covered by the checkpoint that covers its evidence).
//!
//! Everything here is pure: the sequencer hands in the new entries (in log order) and the
//! time, and gets alerts back. The small state the detectors keep — each producer's last
//! sequence number, the passed checks waiting out their grace, recent denials — lives in
//! [`Detectors`]; the sequencer loads it from the database at start (see
//! `sequencer::load_detectors`) and saves what cannot be re-derived from the log with each
//! batch.
//!
//! | detector | fires on |
//! |---|---|
//! | `refresh_reuse` | an `EVENT_KIND_REFRESH_REUSE` event (a spent refresh token presented again) |
//! | `dual_control_violation` | a check denied `duty_conflict` (one subject attempting two duties on one object) |
//! | `never_issued` | a check that passed for a token id with no `TOKEN_ISSUED` event, once a grace has passed |
//! | `wrong_audience` | a check denied `wrong_audience` (a token presented to a service it was not minted for) |
//! | `producer_sequence_gap` | a producer's sequence number skipping ahead of the last one logged |
//! | `denial_burst` | `denial_burst_count` denials for one subject or one client within `denial_burst_window` |
//! | `login_brute_force` | `login_failure_count` failed logins (a wrong password or one-time code, or a login refused by the issuer's rate limit) for one username or from one source address within `login_failure_window` |
//! | `access_refused` | raised by the auditor itself, not a detector: a caller refused for its identity or credentials (an append from the wrong peer, a query without `audit:read`) |

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use serde::Deserialize;
use trias_proto::v1::{AuditEvent, Decision, EventKind};
use trias_runtime::config::duration;

/// The producer name of the auditor's own entries (alerts); no other producer may use it.
pub const PRODUCER: &str = "auditor";

/// The detector settings (`[detectors]` in the auditor's configuration).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectConfig {
    /// How long after a passed check arrives its token's issuance may still arrive (the
    /// issuer's shipper may be behind the validator's) before `never_issued` fires.
    #[serde(default = "default_grace", with = "duration")]
    pub never_issued_grace: Duration,
    /// Denials for one subject or one client that make a burst.
    #[serde(default = "default_burst_count")]
    pub denial_burst_count: usize,
    /// The window the burst's denials fall in; at most one alert per key per window.
    #[serde(default = "default_burst_window", with = "duration")]
    pub denial_burst_window: Duration,
    /// Failed logins for one username, or from one source address, that make a brute force.
    #[serde(default = "default_login_failure_count")]
    pub login_failure_count: usize,
    /// The window those failures fall in; at most one alert per username or address per
    /// window.
    #[serde(default = "default_login_failure_window", with = "duration")]
    pub login_failure_window: Duration,
}

fn default_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_burst_count() -> usize {
    20
}
fn default_burst_window() -> Duration {
    Duration::from_secs(60)
}
fn default_login_failure_count() -> usize {
    10
}
fn default_login_failure_window() -> Duration {
    Duration::from_secs(300)
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            never_issued_grace: default_grace(),
            denial_burst_count: default_burst_count(),
            denial_burst_window: default_burst_window(),
            login_failure_count: default_login_failure_count(),
            login_failure_window: default_login_failure_window(),
        }
    }
}

/// Which detector raised an alert; its name is the alert's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Detector {
    RefreshReuse,
    DualControlViolation,
    NeverIssued,
    WrongAudience,
    ProducerSequenceGap,
    DenialBurst,
    LoginBruteForce,
    /// Not a detector over the stream: the auditor refused a caller (see [`Alert::refused`]).
    AccessRefused,
}

impl Detector {
    pub const ALL: [Detector; 7] = [
        Detector::RefreshReuse,
        Detector::DualControlViolation,
        Detector::NeverIssued,
        Detector::WrongAudience,
        Detector::ProducerSequenceGap,
        Detector::DenialBurst,
        Detector::LoginBruteForce,
    ];

    /// The alert's `reason`.
    pub const fn name(self) -> &'static str {
        match self {
            Detector::RefreshReuse => "refresh_reuse",
            Detector::DualControlViolation => "dual_control_violation",
            Detector::NeverIssued => "never_issued",
            Detector::WrongAudience => "wrong_audience",
            Detector::ProducerSequenceGap => "producer_sequence_gap",
            Detector::DenialBurst => "denial_burst",
            Detector::LoginBruteForce => "login_brute_force",
            Detector::AccessRefused => "access_refused",
        }
    }
}

/// An alert before it is logged: the detector, the fields of the event it is about (so a
/// query by subject, client or token finds the alert beside the events), and the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub detector: Detector,
    pub subject: String,
    pub client_id: String,
    pub token_id: String,
    pub family_id: String,
    pub audience: String,
    pub action: String,
    pub resource: String,
    /// Always `event_ids` and `indexes` (comma-separated, the triggering entries), plus
    /// what the detector adds.
    pub attributes: BTreeMap<String, String>,
}

impl Alert {
    /// An alert about `event` (at `index`), with it as the evidence.
    fn about(detector: Detector, index: u64, event: &AuditEvent) -> Alert {
        Alert {
            detector,
            subject: event.subject.clone(),
            client_id: event.client_id.clone(),
            token_id: event.token_id.clone(),
            family_id: event.family_id.clone(),
            audience: event.audience.clone(),
            action: event.action.clone(),
            resource: event.resource.clone(),
            attributes: BTreeMap::new(),
        }
        .evidence([(index, event.id.as_str())])
    }

    /// The auditor refused `caller` (a peer identity, or `unauthenticated`) the operation
    /// `rpc`, for `why`; `subject` is the token's subject when a token was presented.
    pub fn refused(caller: &str, rpc: &str, why: &str, subject: &str) -> Alert {
        let mut alert = Alert::bare(Detector::AccessRefused)
            .with("caller", caller)
            .with("rpc", rpc)
            .with("why", why);
        alert.subject = subject.to_owned();
        alert.audience = "auditor".to_owned();
        alert.action = rpc.to_owned();
        alert
    }

    fn bare(detector: Detector) -> Alert {
        Alert {
            detector,
            subject: String::new(),
            client_id: String::new(),
            token_id: String::new(),
            family_id: String::new(),
            audience: String::new(),
            action: String::new(),
            resource: String::new(),
            attributes: BTreeMap::new(),
        }
    }

    fn evidence<'a>(mut self, entries: impl IntoIterator<Item = (u64, &'a str)>) -> Alert {
        let (indexes, ids): (Vec<String>, Vec<&str>) = entries
            .into_iter()
            .map(|(index, id)| (index.to_string(), id))
            .unzip();
        self.attributes.insert("event_ids".into(), ids.join(","));
        self.attributes.insert("indexes".into(), indexes.join(","));
        self
    }

    fn with(mut self, key: &str, value: impl ToString) -> Alert {
        self.attributes.insert(key.into(), value.to_string());
        self
    }

    /// The log entry of the alert: kind ALERT, producer `auditor`, no decision, the
    /// detector's name as reason.
    pub fn into_event(self, id: String, seq: u64, time: prost_types::Timestamp) -> AuditEvent {
        AuditEvent {
            id,
            producer: PRODUCER.to_owned(),
            producer_seq: seq,
            time: Some(time),
            kind: EventKind::Alert as i32,
            subject: self.subject,
            client_id: self.client_id,
            token_id: self.token_id,
            family_id: self.family_id,
            audience: self.audience,
            action: self.action,
            resource: self.resource,
            decision: Decision::Unspecified as i32,
            reason: self.detector.name().to_owned(),
            trace_id: String::new(),
            attributes: self.attributes.into_iter().collect(),
        }
    }
}

/// A check that passed, waiting out its grace before the log is asked whether its token
/// was ever issued.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingCheck {
    pub index: u64,
    pub event: AuditEvent,
    /// Unix nanoseconds (auditor clock) from which it is decided.
    pub due: i64,
}

/// Which of an event's fields a burst is counted on: a denial's subject or client
/// (`denial_burst`), a failed login's `username` or `source` attribute (`login_brute_force`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BurstKey {
    Subject,
    Client,
    Username,
    Source,
}

impl BurstKey {
    fn name(self) -> &'static str {
        match self {
            BurstKey::Subject => "subject",
            BurstKey::Client => "client_id",
            BurstKey::Username => "username",
            BurstKey::Source => "source",
        }
    }

    fn parse(name: &str) -> Option<BurstKey> {
        [
            BurstKey::Subject,
            BurstKey::Client,
            BurstKey::Username,
            BurstKey::Source,
        ]
        .into_iter()
        .find(|key| key.name() == name)
    }

    fn detector(self) -> Detector {
        match self {
            BurstKey::Subject | BurstKey::Client => Detector::DenialBurst,
            BurstKey::Username | BurstKey::Source => Detector::LoginBruteForce,
        }
    }
}

/// The most keys (subjects, clients, usernames, addresses) bursts are counted for at once:
/// past it, those whose newest event is oldest are forgotten, so a flood of distinct keys
/// cannot exhaust the auditor's memory.
pub const MAX_BURST_KEYS: usize = 100_000;

/// The reasons of a failed login that count towards `login_brute_force`: wrong credentials
/// (`access_denied`) and logins the issuer's rate limit refused (`slow_down`).
const LOGIN_FAILURES: [&str; 2] = ["access_denied", "slow_down"];

/// The latest denials of one key: at most the burst count of them, all within one window
/// of the newest, oldest first.
#[derive(Debug, Default)]
struct Burst {
    /// (event time in unix nanoseconds, index, event id).
    denials: VecDeque<(i64, u64, String)>,
    /// The time of the newest denial of the last alert.
    last_alert: Option<i64>,
}

/// The detectors' state.
#[derive(Debug)]
pub struct Detectors {
    config: DetectConfig,
    /// The highest sequence number logged per producer (the auditor's own included).
    last_seq: HashMap<String, u64>,
    /// Passed checks waiting out their grace, by index: the first check of each token only
    /// (one decision covers every check of a token), without its attributes, so a flood of
    /// checks of one token costs one entry.
    pending: BTreeMap<u64, PendingCheck>,
    /// The tokens of `pending`.
    pending_tokens: HashSet<String>,
    bursts: HashMap<(BurstKey, String), Burst>,
    /// The newest denial time seen, which ages out idle bursts.
    newest_denial: i64,
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl Detectors {
    /// Detectors that know each producer's last logged sequence number.
    pub fn new(config: DetectConfig, last_seq: HashMap<String, u64>) -> Detectors {
        Detectors {
            config,
            last_seq,
            pending: BTreeMap::new(),
            pending_tokens: HashSet::new(),
            bursts: HashMap::new(),
            newest_denial: i64::MIN,
        }
    }

    pub fn config(&self) -> &DetectConfig {
        &self.config
    }

    /// Runs the detectors over newly logged entries, in log order (duplicates of entries
    /// already logged are not passed in). `now` (unix nanoseconds on the auditor's clock)
    /// starts the grace of passed checks.
    pub fn observe(&mut self, entries: &[(u64, &AuditEvent)], now: i64) -> Vec<Alert> {
        let mut alerts = Vec::new();
        for &(index, event) in entries {
            if event.producer == PRODUCER || event.kind() == EventKind::Alert {
                continue;
            }
            if let Some(alert) = self.sequence(index, event) {
                alerts.push(alert);
            }
            if let Some(alert) = single(index, event) {
                alerts.push(alert);
            }
            if event.kind() == EventKind::Check
                && event.decision() == Decision::Allow
                && !event.token_id.is_empty()
            {
                let due = now.saturating_add(nanos(self.config.never_issued_grace));
                self.wait(PendingCheck {
                    index,
                    event: event.clone(),
                    due,
                });
            }
            if event.decision() == Decision::Deny {
                alerts.extend(self.denial(index, event));
            }
        }
        alerts
    }

    /// The count and window of bursts on `key`.
    fn burst_limits(&self, key: BurstKey) -> (usize, i64) {
        let c = &self.config;
        match key.detector() {
            Detector::LoginBruteForce => (c.login_failure_count, nanos(c.login_failure_window)),
            _ => (c.denial_burst_count, nanos(c.denial_burst_window)),
        }
    }

    /// Producer sequence gaps: the shipper sends each producer's events in order and never
    /// overtakes an unacknowledged batch, so a number beyond the next one means the ones
    /// between are missing. A number at or below the last one (a late or repeated event)
    /// is no gap.
    fn sequence(&mut self, index: u64, event: &AuditEvent) -> Option<Alert> {
        let last = self.last_seq.entry(event.producer.clone()).or_insert(0);
        let seq = event.producer_seq;
        let expected = *last + 1;
        let alert = (seq > expected).then(|| {
            Alert::bare(Detector::ProducerSequenceGap)
                .evidence([(index, event.id.as_str())])
                .with("producer", &event.producer)
                .with("missing_from", expected)
                .with("missing_to", seq - 1)
                .with("missing", seq - expected)
        });
        *last = (*last).max(seq);
        alert
    }

    /// Counts a denial against its subject and its client, and a failed login also against
    /// its username and source address.
    fn denial(&mut self, index: u64, event: &AuditEvent) -> Vec<Alert> {
        let time = event.time.as_ref().map_or(0, crate::store::unix_nanos);
        self.newest_denial = self.newest_denial.max(time);
        let mut keys = vec![
            (BurstKey::Subject, event.subject.as_str()),
            (BurstKey::Client, event.client_id.as_str()),
        ];
        if event.kind() == EventKind::LoginFailed && LOGIN_FAILURES.contains(&event.reason.as_str())
        {
            for key in [BurstKey::Username, BurstKey::Source] {
                if let Some(value) = event.attributes.get(key.name()) {
                    keys.push((key, value));
                }
            }
        }
        let mut alerts = Vec::new();
        for (key, value) in keys {
            if value.is_empty() {
                continue;
            }
            if let Some(alert) = self.count_denial(key, value, time, index, &event.id) {
                alerts.push(alert);
            }
        }
        alerts
    }

    fn count_denial(
        &mut self,
        key: BurstKey,
        value: &str,
        time: i64,
        index: u64,
        id: &str,
    ) -> Option<Alert> {
        let (count, window) = self.burst_limits(key);
        let count = count.max(1);
        let entry = (key, value.to_owned());
        if !self.bursts.contains_key(&entry) && self.bursts.len() >= MAX_BURST_KEYS {
            self.make_room();
        }
        let burst = self.bursts.entry(entry).or_default();
        // Late events go in time order; nearly always this is the end.
        let at = burst
            .denials
            .partition_point(|(t, i, _)| (*t, *i) <= (time, index));
        burst.denials.insert(at, (time, index, id.to_owned()));
        let newest = burst.denials.back().map_or(time, |(t, _, _)| *t);
        while burst
            .denials
            .front()
            .is_some_and(|(t, _, _)| *t < newest.saturating_sub(window))
        {
            burst.denials.pop_front();
        }
        while burst.denials.len() > count {
            burst.denials.pop_front();
        }
        let quiet = burst
            .last_alert
            .is_none_or(|last| newest >= last.saturating_add(window));
        if burst.denials.len() < count || !quiet {
            return None;
        }
        burst.last_alert = Some(newest);
        let mut alert = Alert::bare(key.detector())
            .evidence(burst.denials.iter().map(|(_, i, id)| (*i, id.as_str())))
            .with("key", key.name())
            .with("count", burst.denials.len())
            .with(
                "window_seconds",
                Duration::from_nanos(window.unsigned_abs()).as_secs_f64(),
            )
            .with("last_denial_unix_nanos", newest);
        match key {
            BurstKey::Subject => alert.subject = value.to_owned(),
            BurstKey::Client => alert.client_id = value.to_owned(),
            BurstKey::Username | BurstKey::Source => {
                alert
                    .attributes
                    .insert(key.name().to_owned(), value.to_owned());
            }
        }
        Some(alert)
    }

    /// Forgets idle bursts and, if that is not enough, the tenth whose newest denial is
    /// oldest.
    fn make_room(&mut self) {
        self.prune();
        if self.bursts.len() < MAX_BURST_KEYS - MAX_BURST_KEYS / 10 {
            return;
        }
        let newest = |burst: &Burst| {
            let denial = burst.denials.back().map_or(i64::MIN, |(t, _, _)| *t);
            denial.max(burst.last_alert.unwrap_or(i64::MIN))
        };
        let mut times: Vec<i64> = self.bursts.values().map(newest).collect();
        let nth = times.len() / 10;
        let (_, threshold, _) = times.select_nth_unstable(nth);
        let threshold = *threshold;
        self.bursts.retain(|_, burst| newest(burst) > threshold);
    }

    /// Holds a passed check until its grace is over, unless its token already waits.
    fn wait(&mut self, mut check: PendingCheck) {
        if self.pending_tokens.insert(check.event.token_id.clone()) {
            // The alert names the event's fields, never its attributes.
            check.event.attributes.clear();
            self.pending.insert(check.index, check);
        }
    }

    /// Whether some passed check's grace is over.
    pub fn has_due(&self, now: i64) -> bool {
        self.pending.values().any(|p| p.due <= now)
    }

    /// Takes the passed checks whose grace is over, for the caller to look their tokens up
    /// and hand to [`resolve`].
    pub fn take_due(&mut self, now: i64) -> Vec<PendingCheck> {
        let due: Vec<u64> = self
            .pending
            .values()
            .filter(|p| p.due <= now)
            .map(|p| p.index)
            .collect();
        let taken: Vec<PendingCheck> = due
            .iter()
            .filter_map(|index| self.pending.remove(index))
            .collect();
        for check in &taken {
            self.pending_tokens.remove(&check.event.token_id);
        }
        taken
    }

    /// Puts checks back (their lookup failed, or they are restored at start); they are
    /// decided next time.
    pub fn restore_pending(&mut self, checks: impl IntoIterator<Item = PendingCheck>) {
        for check in checks {
            self.wait(check);
        }
    }

    /// The smallest index whose passed check may still be undecided: every allowed check
    /// below it has been decided. `next_index` is the log's size.
    pub fn decided_below(&self, next_index: u64) -> u64 {
        self.pending.keys().next().copied().unwrap_or(next_index)
    }

    /// The sequence number of the auditor's next alert.
    pub fn next_alert_seq(&mut self) -> u64 {
        let last = self.last_seq.entry(PRODUCER.to_owned()).or_insert(0);
        *last += 1;
        *last
    }

    /// Counts a denial logged before a restart, without raising anything.
    pub fn restore_denial(&mut self, index: u64, event: &AuditEvent) {
        let _ = self.denial(index, event);
    }

    /// Remembers a burst alert (`denial_burst` or `login_brute_force`) logged before a
    /// restart, so its window is not alerted again.
    pub fn restore_burst_alert(&mut self, alert: &AuditEvent) {
        let attribute = |k: &str| alert.attributes.get(k).map(String::as_str);
        let Some(last) = attribute("last_denial_unix_nanos").and_then(|t| t.parse().ok()) else {
            return;
        };
        let Some(key) = attribute("key").and_then(BurstKey::parse) else {
            return;
        };
        let value = match key {
            BurstKey::Subject => alert.subject.clone(),
            BurstKey::Client => alert.client_id.clone(),
            BurstKey::Username | BurstKey::Source => match attribute(key.name()) {
                Some(value) => value.to_owned(),
                None => return,
            },
        };
        let burst = self.bursts.entry((key, value)).or_default();
        burst.last_alert = Some(burst.last_alert.map_or(last, |l: i64| l.max(last)));
    }

    /// Forgets bursts idle for longer than their window.
    pub fn prune(&mut self) {
        let newest = self.newest_denial;
        let horizon = |window: i64| newest.saturating_sub(window);
        let denial = horizon(nanos(self.config.denial_burst_window));
        let login = horizon(nanos(self.config.login_failure_window));
        self.bursts.retain(|(key, _), burst| {
            let horizon = match key.detector() {
                Detector::LoginBruteForce => login,
                _ => denial,
            };
            burst.denials.back().is_some_and(|(t, _, _)| *t >= horizon)
                || burst.last_alert.is_some_and(|t| t >= horizon)
        });
    }

    /// How many keys bursts are counted for.
    pub fn burst_keys(&self) -> usize {
        self.bursts.len()
    }

    /// How many passed checks wait out their grace.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// The detectors that look at one event alone.
fn single(index: u64, event: &AuditEvent) -> Option<Alert> {
    let detector = match (event.kind(), event.decision(), event.reason.as_str()) {
        (EventKind::RefreshReuse, _, _) => Detector::RefreshReuse,
        (EventKind::Check, Decision::Deny, "duty_conflict") => Detector::DualControlViolation,
        (EventKind::Check, Decision::Deny, "wrong_audience") => Detector::WrongAudience,
        _ => return None,
    };
    Some(Alert::about(detector, index, event))
}

/// What the log knows about a token id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenFacts {
    /// A `TOKEN_ISSUED` event names it.
    pub issued: bool,
    /// A `never_issued` alert names it already.
    pub alerted: bool,
}

/// Decides checks whose grace is over: an alert for each token that was neither issued nor
/// already alerted (one alert per token, however often it was checked).
pub fn resolve(due: Vec<PendingCheck>, facts: &HashMap<String, TokenFacts>) -> Vec<Alert> {
    let mut alerted: HashSet<String> = HashSet::new();
    let mut alerts = Vec::new();
    for check in due {
        let token = &check.event.token_id;
        let known = facts.get(token).copied().unwrap_or_default();
        if known.issued || known.alerted || alerted.contains(token) {
            continue;
        }
        alerted.insert(token.clone());
        alerts.push(
            Alert::about(Detector::NeverIssued, check.index, &check.event)
                .with("checked_by", &check.event.producer),
        );
    }
    alerts
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000_000;

    fn event(producer: &str, seq: u64, kind: EventKind) -> AuditEvent {
        AuditEvent {
            id: format!("{producer}-{seq}"),
            producer: producer.into(),
            producer_seq: seq,
            time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000 + i64::try_from(seq).unwrap(),
                nanos: 0,
            }),
            kind: kind as i32,
            subject: "alice".into(),
            client_id: "web".into(),
            ..Default::default()
        }
    }

    fn check(seq: u64, decision: Decision, reason: &str) -> AuditEvent {
        AuditEvent {
            decision: decision as i32,
            reason: reason.into(),
            token_id: format!("jti-{seq}"),
            audience: "payments".into(),
            action: "payment.approve".into(),
            resource: "payment/7".into(),
            ..event("validator", seq, EventKind::Check)
        }
    }

    fn detectors() -> Detectors {
        Detectors::new(DetectConfig::default(), HashMap::new())
    }

    fn observe(d: &mut Detectors, events: &[AuditEvent], first_index: u64) -> Vec<Alert> {
        let entries: Vec<(u64, &AuditEvent)> = (first_index..).zip(events).collect();
        d.observe(&entries, 0)
    }

    fn names(alerts: &[Alert]) -> Vec<&'static str> {
        alerts.iter().map(|a| a.detector.name()).collect()
    }

    #[test]
    fn refresh_reuse_is_an_alert_about_the_family() {
        let mut reuse = event("issuer", 1, EventKind::RefreshReuse);
        reuse.family_id = "fam-1".into();
        reuse.decision = Decision::Deny as i32;
        let alerts = observe(&mut detectors(), &[reuse], 4);
        assert_eq!(names(&alerts), ["refresh_reuse"]);
        assert_eq!(alerts[0].family_id, "fam-1");
        assert_eq!(alerts[0].attributes["event_ids"], "issuer-1");
        assert_eq!(alerts[0].attributes["indexes"], "4");
    }

    #[test]
    fn a_duty_conflict_is_a_dual_control_violation() {
        let alerts = observe(
            &mut detectors(),
            &[check(1, Decision::Deny, "duty_conflict")],
            0,
        );
        assert_eq!(names(&alerts), ["dual_control_violation"]);
        assert_eq!(alerts[0].subject, "alice");
        assert_eq!(alerts[0].resource, "payment/7");
        assert_eq!(alerts[0].action, "payment.approve");
    }

    #[test]
    fn a_wrong_audience_is_an_alert_and_other_denials_are_not() {
        let mut d = detectors();
        let alerts = observe(
            &mut d,
            &[
                check(1, Decision::Deny, "wrong_audience"),
                check(2, Decision::Deny, "expired"),
                check(3, Decision::Deny, "insufficient_scope"),
            ],
            0,
        );
        assert_eq!(names(&alerts), ["wrong_audience"]);
        assert_eq!(alerts[0].token_id, "jti-1");
    }

    #[test]
    fn a_sequence_gap_names_the_missing_range_and_duplicates_are_no_gap() {
        let mut d = detectors();
        let first = observe(&mut d, &[event("validator", 1, EventKind::Check)], 0);
        assert!(first.is_empty());
        let alerts = observe(&mut d, &[event("validator", 4, EventKind::Check)], 1);
        assert_eq!(names(&alerts), ["producer_sequence_gap"]);
        let attributes = &alerts[0].attributes;
        assert_eq!(attributes["producer"], "validator");
        assert_eq!(attributes["missing_from"], "2");
        assert_eq!(attributes["missing_to"], "3");
        assert_eq!(attributes["missing"], "2");
        assert_eq!(attributes["event_ids"], "validator-4");
        // The late ones fill the gap without further alerts; the next in line is no gap.
        let late = observe(
            &mut d,
            &[
                event("validator", 2, EventKind::Check),
                event("validator", 3, EventKind::Check),
                event("validator", 5, EventKind::Check),
            ],
            2,
        );
        assert!(late.is_empty(), "{late:?}");
        // Each producer has its own numbering; a first event must be number 1.
        let other = observe(&mut d, &[event("issuer", 3, EventKind::TokenIssued)], 5);
        assert_eq!(names(&other), ["producer_sequence_gap"]);
        assert_eq!(other[0].attributes["missing_from"], "1");
        // The auditor's own alerts are never counted.
        let own = observe(&mut d, &[event(PRODUCER, 9, EventKind::Alert)], 6);
        assert!(own.is_empty());
    }

    #[test]
    fn restored_sequence_numbers_continue() {
        let mut d = Detectors::new(
            DetectConfig::default(),
            HashMap::from([("issuer".to_owned(), 10)]),
        );
        assert!(observe(&mut d, &[event("issuer", 11, EventKind::TokenIssued)], 0).is_empty());
        assert_eq!(d.next_alert_seq(), 1);
        assert_eq!(d.next_alert_seq(), 2);
    }

    #[test]
    fn a_passed_check_is_decided_after_its_grace() {
        let mut d = detectors();
        let passed = check(1, Decision::Allow, "");
        let issued = check(2, Decision::Allow, "");
        let again = AuditEvent {
            id: "validator-3".into(),
            producer_seq: 3,
            ..passed.clone()
        };
        let entries = [(10, &passed), (11, &issued), (12, &again)];
        assert!(d.observe(&entries, 100 * SECOND).is_empty());
        // A token checked twice waits once, from its first check.
        assert_eq!(d.pending(), 2);
        assert_eq!(d.decided_below(13), 10);
        let grace = nanos(DetectConfig::default().never_issued_grace);
        assert!(!d.has_due(100 * SECOND + grace - 1));
        assert!(d.has_due(100 * SECOND + grace));
        let due = d.take_due(100 * SECOND + grace);
        assert_eq!(due.len(), 2);
        assert_eq!(d.decided_below(13), 13);

        let facts = HashMap::from([(
            "jti-2".to_owned(),
            TokenFacts {
                issued: true,
                alerted: false,
            },
        )]);
        let alerts = resolve(due, &facts);
        // One alert for jti-1 (checked twice), none for the issued jti-2.
        assert_eq!(names(&alerts), ["never_issued"]);
        assert_eq!(alerts[0].token_id, "jti-1");
        assert_eq!(alerts[0].attributes["indexes"], "10");
        assert_eq!(alerts[0].attributes["checked_by"], "validator");

        // A token already alerted is not alerted again.
        d.observe(&[(20, &passed)], 200 * SECOND);
        let facts = HashMap::from([(
            "jti-1".to_owned(),
            TokenFacts {
                issued: false,
                alerted: true,
            },
        )]);
        assert!(resolve(d.take_due(i64::MAX), &facts).is_empty());
    }

    #[test]
    fn a_flood_of_checks_of_one_token_waits_once() {
        let mut d = detectors();
        let flood: Vec<AuditEvent> = (1..=10_000)
            .map(|seq| AuditEvent {
                token_id: "jti-same".into(),
                ..check(seq, Decision::Allow, "")
            })
            .collect();
        observe(&mut d, &flood, 0);
        assert_eq!(d.pending(), 1);
        assert_eq!(d.take_due(i64::MAX).len(), 1);
        // Once decided, a later check of the token waits again.
        observe(&mut d, &flood[..1], 20_000);
        assert_eq!(d.pending(), 1);
    }

    #[test]
    fn denied_and_tokenless_checks_wait_for_nothing() {
        let mut d = detectors();
        let mut tokenless = check(2, Decision::Allow, "");
        tokenless.token_id.clear();
        observe(&mut d, &[check(1, Decision::Deny, "expired"), tokenless], 0);
        assert_eq!(d.pending(), 0);
    }

    fn denial(seq: u64, subject: &str, client: &str, second: i64) -> AuditEvent {
        let mut e = check(seq, Decision::Deny, "insufficient_scope");
        e.subject = subject.into();
        e.client_id = client.into();
        e.time = Some(prost_types::Timestamp {
            seconds: 1_700_000_000 + second,
            nanos: 0,
        });
        e
    }

    fn burst_config() -> DetectConfig {
        DetectConfig {
            denial_burst_count: 3,
            denial_burst_window: Duration::from_secs(10),
            ..DetectConfig::default()
        }
    }

    #[test]
    fn a_burst_of_denials_per_subject_is_one_alert_per_window() {
        let mut d = Detectors::new(burst_config(), HashMap::new());
        // Spread out: never three within ten seconds.
        let spread: Vec<AuditEvent> = (0..4)
            .map(|i| {
                denial(
                    i + 1,
                    "alice",
                    &format!("c{i}"),
                    i64::try_from(i).unwrap() * 6,
                )
            })
            .collect();
        assert!(observe(&mut d, &spread, 0).is_empty());
        // Three within the window: one alert, naming all three.
        let mut d = Detectors::new(burst_config(), HashMap::new());
        let close: Vec<AuditEvent> = (0..6)
            .map(|i| denial(i + 1, "bob", &format!("c{i}"), i64::try_from(i).unwrap()))
            .collect();
        let alerts = observe(&mut d, &close, 100);
        assert_eq!(names(&alerts), ["denial_burst"]);
        assert_eq!(alerts[0].subject, "bob");
        assert_eq!(alerts[0].client_id, "");
        assert_eq!(alerts[0].attributes["key"], "subject");
        assert_eq!(alerts[0].attributes["indexes"], "100,101,102");
        assert_eq!(alerts[0].attributes["count"], "3");
        // The next window alerts again.
        let later: Vec<AuditEvent> = (0..3)
            .map(|i| {
                denial(
                    i + 7,
                    "bob",
                    &format!("d{i}"),
                    20 + i64::try_from(i).unwrap(),
                )
            })
            .collect();
        assert_eq!(names(&observe(&mut d, &later, 200)), ["denial_burst"]);
    }

    #[test]
    fn a_burst_per_client_counts_across_subjects() {
        let mut d = Detectors::new(burst_config(), HashMap::new());
        let events: Vec<AuditEvent> = ["a", "b", "c"]
            .iter()
            .zip(1..)
            .map(|(subject, seq)| denial(seq, subject, "scraper", 1))
            .collect();
        let alerts = observe(&mut d, &events, 0);
        assert_eq!(names(&alerts), ["denial_burst"]);
        assert_eq!(alerts[0].client_id, "scraper");
        assert_eq!(alerts[0].attributes["key"], "client_id");
    }

    #[test]
    fn a_restored_burst_alert_keeps_its_window_quiet() {
        let mut first = Detectors::new(burst_config(), HashMap::new());
        let events: Vec<AuditEvent> = (0..3).map(|i| denial(i + 1, "eve", "", 1)).collect();
        let alert = observe(&mut first, &events, 0).remove(0);
        let logged = alert.into_event("a1".into(), 1, prost_types::Timestamp::default());

        // After a restart: the denials and the alert are read back from the log.
        let mut again =
            Detectors::new(burst_config(), HashMap::from([("validator".to_owned(), 3)]));
        for (i, event) in events.iter().enumerate() {
            again.restore_denial(i as u64, event);
        }
        again.restore_burst_alert(&logged);
        let more = denial(4, "eve", "", 2);
        assert!(observe(&mut again, &[more], 3).is_empty());
    }

    fn failed_login(
        seq: u64,
        username: &str,
        source: &str,
        reason: &str,
        second: i64,
    ) -> AuditEvent {
        let mut e = event("issuer", seq, EventKind::LoginFailed);
        e.subject.clear();
        e.client_id = format!("frontend-{seq}");
        e.decision = Decision::Deny as i32;
        e.reason = reason.into();
        e.attributes.insert("username".into(), username.into());
        e.attributes.insert("source".into(), source.into());
        e.time = Some(prost_types::Timestamp {
            seconds: 1_700_000_000 + second,
            nanos: 0,
        });
        e
    }

    fn login_config() -> DetectConfig {
        DetectConfig {
            login_failure_count: 3,
            login_failure_window: Duration::from_secs(60),
            ..DetectConfig::default()
        }
    }

    #[test]
    fn failed_logins_for_one_username_are_a_brute_force() {
        let mut d = Detectors::new(login_config(), HashMap::new());
        // Two wrong passwords and one login the issuer's limit refused, from three addresses.
        let events = [
            failed_login(1, "alice", "192.0.2.1", "access_denied", 0),
            failed_login(2, "alice", "192.0.2.2", "access_denied", 10),
            failed_login(3, "alice", "192.0.2.3", "slow_down", 20),
        ];
        let alerts = observe(&mut d, &events, 40);
        assert_eq!(names(&alerts), ["login_brute_force"]);
        assert_eq!(alerts[0].attributes["key"], "username");
        assert_eq!(alerts[0].attributes["username"], "alice");
        assert_eq!(alerts[0].attributes["indexes"], "40,41,42");
        assert_eq!(alerts[0].subject, "");
        // More failures in the same window raise nothing more.
        let more = [failed_login(4, "alice", "192.0.2.4", "access_denied", 30)];
        assert!(observe(&mut d, &more, 43).is_empty());
        // Other refusals of a login (a malformed request, a missing second factor) and
        // failures spread wider than the window are no brute force.
        let mut d = Detectors::new(login_config(), HashMap::new());
        let events = [
            failed_login(1, "bob", "192.0.2.1", "invalid_request", 0),
            failed_login(2, "bob", "192.0.2.2", "mfa_required", 1),
            failed_login(3, "bob", "192.0.2.3", "access_denied", 2),
            failed_login(4, "bob", "192.0.2.4", "access_denied", 100),
        ];
        assert!(observe(&mut d, &events, 0).is_empty());
    }

    #[test]
    fn failed_logins_from_one_address_across_usernames_are_a_brute_force() {
        let mut d = Detectors::new(login_config(), HashMap::new());
        let events: Vec<AuditEvent> = ["ann", "ben", "cat"]
            .iter()
            .zip(1..)
            .map(|(user, seq)| failed_login(seq, user, "198.51.100.9", "access_denied", 1))
            .collect();
        let alerts = observe(&mut d, &events, 0);
        assert_eq!(names(&alerts), ["login_brute_force"]);
        assert_eq!(alerts[0].attributes["key"], "source");
        assert_eq!(alerts[0].attributes["source"], "198.51.100.9");
    }

    #[test]
    fn a_restored_brute_force_alert_keeps_its_window_quiet() {
        let mut first = Detectors::new(login_config(), HashMap::new());
        let events: Vec<AuditEvent> = (1..=3)
            .map(|seq| failed_login(seq, "dora", &format!("192.0.2.{seq}"), "access_denied", 1))
            .collect();
        let alert = observe(&mut first, &events, 0).remove(0);
        let logged = alert.into_event("a1".into(), 1, prost_types::Timestamp::default());
        let mut again = Detectors::new(login_config(), HashMap::from([("issuer".to_owned(), 3)]));
        for (i, event) in events.iter().enumerate() {
            again.restore_denial(i as u64, event);
        }
        again.restore_burst_alert(&logged);
        let more = failed_login(4, "dora", "192.0.2.4", "access_denied", 2);
        assert!(observe(&mut again, &[more], 3).is_empty());
    }

    #[test]
    fn a_flood_of_distinct_keys_is_counted_in_bounded_memory() {
        let mut d = Detectors::new(login_config(), HashMap::new());
        let flood: Vec<AuditEvent> = (1..=(MAX_BURST_KEYS as u64 + 20_000))
            .map(|seq| failed_login(seq, &format!("u{seq}"), "", "access_denied", 1))
            .collect();
        let entries: Vec<(u64, &AuditEvent)> = (0..).zip(&flood).collect();
        for chunk in entries.chunks(10_000) {
            d.observe(chunk, 0);
            assert!(d.burst_keys() <= MAX_BURST_KEYS);
        }
    }

    #[test]
    fn idle_bursts_are_forgotten() {
        let mut d = Detectors::new(burst_config(), HashMap::new());
        observe(&mut d, &[denial(1, "old", "", 0)], 0);
        observe(&mut d, &[denial(2, "new", "", 100)], 1);
        d.prune();
        assert_eq!(d.bursts.len(), 1);
    }

    #[test]
    fn an_alert_is_a_log_entry_of_the_auditor() {
        let alert = single(3, &check(1, Decision::Deny, "duty_conflict")).unwrap();
        let event = alert.into_event(
            "id".into(),
            7,
            prost_types::Timestamp {
                seconds: 5,
                nanos: 0,
            },
        );
        assert_eq!(event.kind(), EventKind::Alert);
        assert_eq!(event.producer, PRODUCER);
        assert_eq!(event.producer_seq, 7);
        assert_eq!(event.decision(), Decision::Unspecified);
        assert_eq!(event.reason, "dual_control_violation");
        assert_eq!(event.attributes["indexes"], "3");
        assert_eq!(event.attributes["event_ids"], "validator-1");
        // Alerts are not detected again.
        let mut d = detectors();
        assert!(d.observe(&[(4, &event)], 0).is_empty());
    }

    #[test]
    fn every_detector_has_its_name() {
        let names: Vec<&str> = Detector::ALL.iter().map(|d| d.name()).collect();
        assert_eq!(
            names,
            [
                "refresh_reuse",
                "dual_control_violation",
                "never_issued",
                "wrong_audience",
                "producer_sequence_gap",
                "denial_burst",
                "login_brute_force"
            ]
        );
    }
}
