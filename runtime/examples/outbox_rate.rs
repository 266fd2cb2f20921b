//! Measures the outbox's group-commit rate: N events recorded from 64 concurrent tasks.
//!
//! `cargo run --release -p trias-runtime --example outbox_rate [events] [tasks]`
//!
//! With one task every event waits for its own commit, which shows the disk's fsync rate.

#![allow(clippy::print_stdout, reason = "the example reports its measurement")]

use std::sync::Arc;
use std::time::Instant;

use trias_proto::v1::EventKind;
use trias_runtime::clock::SystemClock;
use trias_runtime::event::EventDraft;
use trias_runtime::outbox::{Outbox, OutboxConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let events: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 100_000,
    };
    let tasks: usize = match std::env::args().nth(2) {
        Some(n) => n.parse::<usize>()?.max(1),
        None => 64,
    };
    let dir = tempfile::tempdir()?;
    let outbox = Outbox::open(
        OutboxConfig::new(dir.path().join("outbox.db"), "bench"),
        Arc::new(SystemClock),
    )
    .await?;

    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let outbox = outbox.clone();
            let share = events / tasks + usize::from(task < events % tasks);
            tokio::spawn(async move {
                for i in 0..share {
                    let draft = EventDraft::new(EventKind::Check)
                        .subject(format!("user{task}"))
                        .audience("payments")
                        .action("approve")
                        .resource(format!("payment/{i}"))
                        .allow();
                    outbox.record(draft).await?;
                }
                Ok::<_, trias_runtime::outbox::OutboxError>(())
            })
        })
        .collect();
    for task in handles {
        task.await??;
    }
    let elapsed = started.elapsed();
    outbox.close().await;

    let commits = outbox.commits();
    println!(
        "{events} events from {tasks} tasks in {:.2?}: {:.0} events/s, {commits} commits \
         ({:.1} events per commit, {:.0} commits/s)",
        elapsed,
        events as f64 / elapsed.as_secs_f64(),
        events as f64 / commits.max(1) as f64,
        commits as f64 / elapsed.as_secs_f64(),
    );
    Ok(())
}
