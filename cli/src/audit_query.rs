//! `trias audit query` and `trias audit watch`: what a security team reads from the log. A
//! table for people, one JSON object per line (`--json`) for scripts. Both need an analyst's
//! token (`audit:read` at audience `auditor`).

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use trias_proto::v1::auditor_client::AuditorClient;
use trias_proto::v1::{
    Decision, EventKind, LogEntry, Order, QueryRequest, TimeRange, WatchAlertsRequest,
};
use trias_runtime::access::Bearer;

use crate::remote::{CliError, Services, usage};

/// The security analyst's token that `Query` and `WatchAlerts` need.
#[derive(Debug, Clone, Args)]
pub struct AnalystToken {
    /// A security analyst's access token (`audit:read` at audience `auditor`).
    #[arg(
        long,
        env = "TRIAS_AUDIT_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true,
        value_name = "TOKEN"
    )]
    pub token: String,
}

/// `trias audit query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub services: Services,
    #[command(flatten)]
    pub analyst: AnalystToken,
    /// Events about this user or client (the token's `sub`).
    #[arg(long)]
    pub subject: Option<String>,
    /// Events about this OAuth client.
    #[arg(long)]
    pub client_id: Option<String>,
    /// An access token's id (`jti`).
    #[arg(long)]
    pub token_id: Option<String>,
    /// A refresh-token family (`sid`).
    #[arg(long)]
    pub family_id: Option<String>,
    /// Events at this audience (the service a token or check was for).
    #[arg(long)]
    pub audience: Option<String>,
    /// Checks of this action, e.g. `payment.approve`.
    #[arg(long)]
    pub action: Option<String>,
    /// The object acted upon, e.g. `payment/7`.
    #[arg(long)]
    pub resource: Option<String>,
    /// Only allowed or only denied events.
    #[arg(long, value_enum)]
    pub decision: Option<DecisionArg>,
    /// A reason code, e.g. `duty_conflict`, `invalid_scope`, or an alert's detector.
    #[arg(long)]
    pub reason: Option<String>,
    /// Event kinds, e.g. `check`, `token_issued`, `alert`; repeat for several.
    #[arg(long = "kind", value_name = "KIND", value_parser = parse_kind)]
    pub kinds: Vec<EventKind>,
    /// Only events from this long ago until now: `90s`, `15m`, `2h`, `7d`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "from")]
    pub since: Option<Duration>,
    /// Only events at or after this time (Unix seconds).
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub from: Option<i64>,
    /// Only events before this time (Unix seconds).
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub to: Option<i64>,
    /// Oldest first (the default is newest first).
    #[arg(long)]
    pub oldest_first: bool,
    /// At most this many events; 0 for all.
    #[arg(long, default_value_t = 50)]
    pub limit: u64,
    /// One JSON object per event and line, every field and attribute.
    #[arg(long)]
    pub json: bool,
}

/// `trias audit watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub services: Services,
    #[command(flatten)]
    pub analyst: AnalystToken,
    /// First replay the alerts logged after this log index (0: every alert in the log), then
    /// follow new ones as they are raised.
    #[arg(long, default_value_t = 0)]
    pub after_index: u64,
    /// Stop after this many alerts (0: watch until interrupted).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// One JSON object per alert and line.
    #[arg(long)]
    pub json: bool,
}

/// `--decision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DecisionArg {
    Allow,
    Deny,
}

async fn connect(
    services: &Services,
    token: &str,
) -> Result<AuditorClient<InterceptedService<Channel, Bearer>>, CliError> {
    crate::remote::auditor_client(&services.auditor, &services.pki, Some(token)).await
}

/// Streams the matching events to `out`.
pub async fn query(args: QueryArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| usage("the clock is before 1970"))?;
    let from = match (args.since, args.from) {
        (Some(since), _) => Some(now.saturating_sub(since).as_secs() as i64),
        (None, from) => from,
    };
    let stamp = |seconds: i64| prost_types::Timestamp { seconds, nanos: 0 };
    let time = (from.is_some() || args.to.is_some()).then(|| TimeRange {
        from: from.map(stamp),
        to: args.to.map(stamp),
    });
    let request = QueryRequest {
        subject: args.subject.clone().unwrap_or_default(),
        client_id: args.client_id.clone().unwrap_or_default(),
        token_id: args.token_id.clone().unwrap_or_default(),
        family_id: args.family_id.clone().unwrap_or_default(),
        audience: args.audience.clone().unwrap_or_default(),
        action: args.action.clone().unwrap_or_default(),
        resource: args.resource.clone().unwrap_or_default(),
        decision: match args.decision {
            None => Decision::Unspecified,
            Some(DecisionArg::Allow) => Decision::Allow,
            Some(DecisionArg::Deny) => Decision::Deny,
        }
        .into(),
        reason: args.reason.clone().unwrap_or_default(),
        kinds: args.kinds.iter().map(|k| i32::from(*k)).collect(),
        time,
        order: if args.oldest_first {
            Order::OldestFirst
        } else {
            Order::NewestFirst
        }
        .into(),
        page_size: u32::try_from(args.limit.clamp(1, 1000)).unwrap_or(1000),
        page_token: String::new(),
        limit: args.limit,
    };
    let mut client = connect(&args.services, &args.analyst.token).await?;
    let mut stream = client
        .query(request)
        .await
        .map_err(|s| CliError::from_status("auditor", &s))?
        .into_inner();
    let write = |out: &mut dyn Write, line: String| {
        writeln!(out, "{line}").map_err(|e| usage(format!("cannot write: {e}")))
    };
    if !args.json {
        write(out, header())?;
    }
    let mut shown = 0u64;
    while let Some(page) = stream
        .message()
        .await
        .map_err(|s| CliError::from_status("auditor", &s))?
    {
        for entry in &page.entries {
            shown += 1;
            write(
                out,
                if args.json {
                    json_line(entry)
                } else {
                    row(entry)
                },
            )?;
        }
    }
    if !args.json {
        eprintln!("{shown} event(s)");
    }
    Ok(())
}

/// Prints alerts as the auditor raises them.
pub async fn watch(args: WatchArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let mut client = connect(&args.services, &args.analyst.token).await?;
    let mut stream = client
        .watch_alerts(WatchAlertsRequest {
            after_index: args.after_index,
        })
        .await
        .map_err(|s| CliError::from_status("auditor", &s))?
        .into_inner();
    if !args.json {
        eprintln!("watching alerts (Ctrl-C stops)");
    }
    let mut seen = 0u64;
    while let Some(entry) = stream
        .message()
        .await
        .map_err(|s| CliError::from_status("auditor", &s))?
    {
        let line = if args.json {
            json_line(&entry)
        } else {
            alert_line(&entry)
        };
        writeln!(out, "{line}").map_err(|e| usage(format!("cannot write: {e}")))?;
        let _ = out.flush();
        seen += 1;
        if args.count != 0 && seen >= args.count {
            return Ok(());
        }
    }
    Err(usage("the auditor closed the alert stream"))
}

fn header() -> String {
    format!(
        "{:>8}  {:<20}  {:<22}  {:<5}  {:<20}  {:<14}  {:<14}  {:<18}  {}",
        "INDEX", "TIME (UTC)", "KIND", "DEC", "REASON", "SUBJECT", "CLIENT", "ACTION", "RESOURCE"
    )
}

fn row(entry: &LogEntry) -> String {
    let Some(event) = &entry.event else {
        return format!("{:>8}  (no event)", entry.index);
    };
    format!(
        "{:>8}  {:<20}  {:<22}  {:<5}  {:<20}  {:<14}  {:<14}  {:<18}  {}",
        entry.index,
        event.time.as_ref().map(utc).unwrap_or_default(),
        kind_name(event.kind),
        decision_name(event.decision),
        event.reason,
        short(&event.subject, 14),
        short(&event.client_id, 14),
        event.action,
        event.resource,
    )
}

fn alert_line(entry: &LogEntry) -> String {
    let Some(event) = &entry.event else {
        return format!("#{} (no event)", entry.index);
    };
    let mut line = format!(
        "{}  #{}  ALERT {}",
        event.time.as_ref().map(utc).unwrap_or_default(),
        entry.index,
        event.reason
    );
    for (key, value) in [
        ("subject", &event.subject),
        ("client", &event.client_id),
        ("token", &event.token_id),
        ("family", &event.family_id),
        ("resource", &event.resource),
    ] {
        if !value.is_empty() {
            line.push_str(&format!("  {key}={value}"));
        }
    }
    if let Some(detail) = event.attributes.get("detail") {
        line.push_str(&format!("  ({detail})"));
    }
    line
}

fn json_line(entry: &LogEntry) -> String {
    let Some(event) = &entry.event else {
        return json!({ "index": entry.index }).to_string();
    };
    let attributes: serde_json::Map<String, Value> = event
        .attributes
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "index": entry.index,
        "id": event.id,
        "producer": event.producer,
        "producer_seq": event.producer_seq,
        "time": event.time.as_ref().map(utc),
        "kind": kind_name(event.kind),
        "subject": event.subject,
        "client_id": event.client_id,
        "token_id": event.token_id,
        "family_id": event.family_id,
        "audience": event.audience,
        "action": event.action,
        "resource": event.resource,
        "decision": decision_name(event.decision),
        "reason": event.reason,
        "trace_id": event.trace_id,
        "attributes": attributes,
    })
    .to_string()
}

fn kind_name(kind: i32) -> String {
    EventKind::try_from(kind)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("EVENT_KIND_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| kind.to_string())
}

fn decision_name(decision: i32) -> &'static str {
    match Decision::try_from(decision) {
        Ok(Decision::Allow) => "allow",
        Ok(Decision::Deny) => "deny",
        _ => "-",
    }
}

/// At most `width` characters, with `…` when cut.
fn short(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let kept: String = text.chars().take(width.saturating_sub(1)).collect();
        format!("{kept}…")
    }
}

/// `--kind check` → `EventKind::Check`.
fn parse_kind(text: &str) -> Result<EventKind, String> {
    let name = format!(
        "EVENT_KIND_{}",
        text.trim().to_uppercase().replace('-', "_")
    );
    match EventKind::from_str_name(&name) {
        Some(kind) if kind != EventKind::Unspecified => Ok(kind),
        _ => Err(format!(
            "unknown event kind {text:?} (e.g. check, token_issued, token_refused, refresh_reuse, login_failed, alert)"
        )),
    }
}

/// `90s`, `15m`, `2h`, `7d`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like 90s, 15m, 2h or 7d");
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    number
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(bad)
}

/// A timestamp as `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds).
fn utc(time: &prost_types::Timestamp) -> String {
    let days = time.seconds.div_euclid(86_400);
    let second_of_day = time.seconds.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn timestamps_print_as_utc() {
        let at = |seconds| utc(&prost_types::Timestamp { seconds, nanos: 0 });
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_796_385_600), "2026-12-04T12:00:00Z");
        assert_eq!(at(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn kinds_and_durations_parse_or_say_why() {
        assert_eq!(parse_kind("check").unwrap(), EventKind::Check);
        assert_eq!(parse_kind("token-issued").unwrap(), EventKind::TokenIssued);
        assert!(parse_kind("unspecified").is_err());
        assert!(
            parse_kind("nonsense")
                .unwrap_err()
                .contains("unknown event kind")
        );
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        for bad in ["", "m", "15", "15w", "-5m", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn long_values_are_cut_for_the_table() {
        assert_eq!(short("alice", 14), "alice");
        assert_eq!(short("abcdefghijklmnopq", 5), "abcd…");
    }
}
