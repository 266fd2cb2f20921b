//! Logging set-up shared by every service: `tracing` events to stderr, filtered by `RUST_LOG`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: human-readable or JSON lines, filtered by `RUST_LOG`
/// (default `info`). Calling it again, or after another subscriber was set, does nothing.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // An error only means a subscriber is already installed, which is what the caller wants.
    let _already_set = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn init_is_idempotent() {
        super::init(false);
        super::init(true);
        tracing::info!(check = true, "telemetry initialised twice");
    }
}
