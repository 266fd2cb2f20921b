//! `trias up`: the whole suite on one machine, each service a separate process of this
//! binary (`trias serve <service>`), on the embedded SQLite default.
//!
//! The first run creates the data directory: the sample policy, one configuration file per
//! service, and demo clients and users, whose credentials go to `stack.env` and `stack.json`
//! (owner-only) so scripts can use the running stack without parsing logs. The issuer and the
//! validator ship their audit outboxes to the auditor, which starts first.

use crate::pki::Pki;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use trias_runtime::tls::TlsFiles;

use serde_json::json;
use tokio::process::{Child, Command};
use trias_issuer::IssuerConfig;
use trias_issuer::issuer::{Actor, ClientSpec};
use trias_policy::GrantType;

type Error = Box<dyn std::error::Error>;

/// The stack's first port: the services listen on the next ones (see [`Ports`]).
pub const DEFAULT_BASE_PORT: u16 = 7400;

/// Where the local stack's services listen: fixed offsets from one base port, so a second
/// stack (a test, say) can run beside the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    base: u16,
}

impl Ports {
    /// The ports from `base` + 1 to `base` + 80; `None` if they would pass 65535.
    pub fn new(base: u16) -> Option<Self> {
        base.checked_add(80).map(|_| Self { base })
    }

    fn addr(self, offset: u16) -> String {
        format!("127.0.0.1:{}", self.base + offset)
    }

    pub fn issuer_grpc(self) -> String {
        self.addr(1)
    }
    pub fn issuer_http(self) -> String {
        self.addr(2)
    }
    pub fn validator_grpc(self) -> String {
        self.addr(11)
    }
    pub fn validator_http(self) -> String {
        self.addr(12)
    }
    pub fn auditor_grpc(self) -> String {
        self.addr(21)
    }
    pub fn issuer_metrics(self) -> String {
        self.addr(3)
    }
    pub fn validator_metrics(self) -> String {
        self.addr(13)
    }
    pub fn auditor_metrics(self) -> String {
        self.addr(23)
    }
    /// The demo frontend's registered redirect URI (nothing listens there unless a
    /// frontend, or `trias token --login`, does).
    pub fn demo_redirect(self) -> String {
        format!("http://{}/callback", self.addr(80))
    }
}

/// Runs one service in this process until Ctrl-C or SIGTERM.
pub async fn serve(service: &str, config_path: &Path) -> Result<(), Error> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    match service {
        "issuer" => {
            let config = IssuerConfig::load(Some(config_path), &env)?;
            let telemetry = trias_runtime::telemetry::init_service(config.log_json, service);
            let result = trias_issuer::run(&config, trias_issuer::shutdown_signal()).await;
            telemetry.shutdown().await;
            Ok(result?)
        }
        "validator" => {
            let config = trias_validator::ValidatorConfig::load(Some(config_path), &env)?;
            let telemetry = trias_runtime::telemetry::init_service(config.log_json, service);
            let result = trias_validator::run(&config, trias_validator::shutdown_signal()).await;
            telemetry.shutdown().await;
            Ok(result?)
        }
        "auditor" => {
            let config = trias_auditor::AuditorConfig::load(Some(config_path), &env)?;
            let telemetry = trias_runtime::telemetry::init_service(config.log_json, service);
            let result = trias_auditor::run(&config, trias_auditor::shutdown_signal()).await;
            telemetry.shutdown().await;
            Ok(result?)
        }
        other => Err(format!("unknown service {other}").into()),
    }
}

/// Starts the local stack and waits for Ctrl-C.
pub async fn up(data_dir: &Path, ports: Ports) -> Result<(), Error> {
    // Ctrl-C and SIGTERM are caught from the start: one that arrives while the services are
    // still starting is kept until they are up, and then stops them, instead of killing this
    // process and leaving them running.
    let mut stop_signals = StopSignals::install()?;
    let (issuer_grpc, issuer_http) = (ports.issuer_grpc(), ports.issuer_http());
    let (validator_grpc, validator_http) = (ports.validator_grpc(), ports.validator_http());
    let auditor_grpc = ports.auditor_grpc();
    std::fs::create_dir_all(data_dir)?;
    private(data_dir, 0o700)?;
    let data_dir = std::fs::canonicalize(data_dir)?;
    let policy = data_dir.join("policy.toml");
    if !policy.exists() {
        std::fs::write(&policy, trias_policy::SAMPLE)?;
    }
    let auditor_config = data_dir.join("auditor.toml");
    if !auditor_config.exists() {
        std::fs::write(
            &auditor_config,
            format!(
                "# The local auditor; see docs/configuration.md.\ngrpc_addr = \"{auditor_grpc}\"\ndata_dir = {:?}\nvalidator_url = \"http://{validator_grpc}\"\n",
                data_dir.join("auditor").display().to_string(),
            ),
        )?;
    }
    let issuer_config = data_dir.join("issuer.toml");
    if !issuer_config.exists() {
        std::fs::write(
            &issuer_config,
            format!(
                "# The local issuer; see docs/configuration.md.\ngrpc_addr = \"{issuer_grpc}\"\nhttp_addr = \"{issuer_http}\"\ndata_dir = {:?}\npolicy = {:?}\nvalidator_url = \"http://{validator_grpc}\"\n",
                data_dir.join("issuer").display().to_string(),
                policy.display().to_string(),
            ),
        )?;
    }
    let validator_config = data_dir.join("validator.toml");
    if !validator_config.exists() {
        std::fs::write(
            &validator_config,
            format!(
                "# The local validator; see docs/configuration.md.\ngrpc_addr = \"{validator_grpc}\"\nhttp_addr = \"{validator_http}\"\nissuer_grpc = \"http://{issuer_grpc}\"\nissuer = \"http://{issuer_http}\"\ndata_dir = {:?}\npolicy = {:?}\n",
                data_dir.join("validator").display().to_string(),
                policy.display().to_string(),
            ),
        )?;
    }
    // Also for a data directory from before the auditor was part of the stack.
    for config in [&issuer_config, &validator_config] {
        ship_to_auditor(config, &auditor_grpc)?;
    }
    // The auditor and the issuer have the validator check security teams' and
    // administrators' tokens (also for a data directory from before they did).
    for config in [&auditor_config, &issuer_config] {
        let text = std::fs::read_to_string(config)?;
        if !text.contains("validator_url") {
            let line = format!("validator_url = \"http://{validator_grpc}\"\n");
            std::fs::write(config, format!("{line}{text}"))?;
        }
    }
    // Prometheus metrics on their own ports (also for a data directory from before them).
    for (config, addr) in [
        (&auditor_config, ports.auditor_metrics()),
        (&issuer_config, ports.issuer_metrics()),
        (&validator_config, ports.validator_metrics()),
    ] {
        let text = std::fs::read_to_string(config)?;
        if !text.contains("metrics_addr") {
            let line = format!("metrics_addr = \"{addr}\"\n");
            std::fs::write(config, format!("{line}{text}"))?;
        }
    }
    // Mutual TLS between the services, with development certificates (also for a data
    // directory from before mTLS).
    let pki = Pki::new(data_dir.join("pki"));
    pki.init(&["payments".to_owned()])?;
    for (config, name) in [
        (&auditor_config, "auditor"),
        (&issuer_config, "issuer"),
        (&validator_config, "validator"),
    ] {
        use_tls(config, &pki.files(name))?;
    }
    let stack_json = data_dir.join("stack.json");
    let mut stack: serde_json::Value = if stack_json.exists() {
        serde_json::from_str(&std::fs::read_to_string(&stack_json)?)?
    } else {
        create_demo(&issuer_config, ports).await?
    };
    if stack["auditor_grpc"].is_null() || stack["pki"].is_null() || !stack_json.exists() {
        stack["auditor_grpc"] = json!(format!("http://{auditor_grpc}"));
        stack["pki"] = json!(pki.dir.display().to_string());
        write_stack(&data_dir, &stack)?;
    }

    for addr in [
        &issuer_grpc,
        &issuer_http,
        &ports.issuer_metrics(),
        &validator_grpc,
        &validator_http,
        &ports.validator_metrics(),
        &auditor_grpc,
        &ports.auditor_metrics(),
    ] {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Err(format!("{addr} is already in use: is another `trias up` running?").into());
        }
    }
    let exe = std::env::current_exe()?;
    // The auditor first, so the others' outboxes ship as soon as they start.
    let mut auditor = Command::new(&exe)
        .args(["serve", "auditor", "--config"])
        .arg(&auditor_config)
        .kill_on_drop(true)
        .spawn()?;
    wait_ready(&mut auditor, &auditor_grpc).await?;
    let mut issuer = Command::new(&exe)
        .args(["serve", "issuer", "--config"])
        .arg(&issuer_config)
        .kill_on_drop(true)
        .spawn()?;
    wait_ready(&mut issuer, &issuer_grpc).await?;
    let mut validator = Command::new(&exe)
        .args(["serve", "validator", "--config"])
        .arg(&validator_config)
        .kill_on_drop(true)
        .spawn()?;
    wait_ready(&mut validator, &validator_grpc).await?;

    println!("Trias is running (data in {}).", data_dir.display());
    println!("  issuer gRPC  http://{issuer_grpc}");
    println!("  issuer HTTP  http://{issuer_http}  (token, revoke, metadata, JWKS, login)");
    println!("  validator gRPC  http://{validator_grpc}  (Check, CheckBatch)");
    println!("  validator HTTP  http://{validator_http}  (POST /oauth2/introspect)");
    println!(
        "  auditor gRPC  http://{auditor_grpc}  (Query, WatchAlerts, GetCheckpoint, proofs, Export)"
    );
    println!(
        "  metrics  http://{}/metrics  http://{}/metrics  http://{}/metrics  (issuer, validator, auditor)",
        ports.issuer_metrics(),
        ports.validator_metrics(),
        ports.auditor_metrics()
    );
    println!(
        "  gRPC is mutual TLS: certificates in {} (`trias pki init --backend NAME` adds one)",
        pki.dir.display()
    );
    println!("  credentials  {}/stack.env", data_dir.display());
    println!();
    println!("Try it (README.md has the whole tour):");
    println!("  . {}/stack.env", data_dir.display());
    println!(
        "  T=$(trias token --client-id \"$TRIAS_DEMO_CLIENT_ID\" --client-secret \"$TRIAS_DEMO_CLIENT_SECRET\" --scope payments:create)"
    );
    println!(
        "  trias check --as payments --token \"$T\" --action payment.create --resource payment/1"
    );
    println!();
    println!("Ctrl-C stops all services.");
    let _ = stack;

    let exited = tokio::select! {
        () = stop_signals.received() => None,
        status = issuer.wait() => Some(("issuer", status?)),
        status = validator.wait() => Some(("validator", status?)),
        status = auditor.wait() => Some(("auditor", status?)),
    };
    // The producers first: each flushes its outbox to the auditor as it stops.
    stop(&mut validator).await;
    stop(&mut issuer).await;
    stop(&mut auditor).await;
    if let Some((service, status)) = exited {
        return Err(format!("the {service} exited unexpectedly ({status})").into());
    }
    println!("stopped");
    Ok(())
}

/// SIGINT (Ctrl-C) and SIGTERM, registered when created: a signal that comes before
/// [`StopSignals::received`] is polled is not lost.
struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> Result<StopSignals, Error> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(StopSignals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    /// Completes when either signal has come (also before this was first polled).
    async fn received(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Makes a producer's configuration ship its audit outbox to the local auditor, unless it
/// already names an auditor.
fn ship_to_auditor(config: &Path, auditor_grpc: &str) -> Result<(), Error> {
    let text = std::fs::read_to_string(config)?;
    if text.contains("auditor_url") {
        return Ok(());
    }
    let line = format!("auditor_url = \"http://{auditor_grpc}\"\n");
    let updated = match text.find("[audit]\n") {
        Some(at) => {
            let after = at + "[audit]\n".len();
            format!("{}{line}{}", &text[..after], &text[after..])
        }
        None => format!("{text}\n[audit]\n{line}"),
    };
    std::fs::write(config, updated)?;
    Ok(())
}

/// Gives a service's configuration a `[tls]` table with its development certificate, unless
/// it already has one (or runs in development plain text).
fn use_tls(config: &Path, files: &TlsFiles) -> Result<(), Error> {
    let text = std::fs::read_to_string(config)?;
    if text.contains("[tls]") || text.contains("dev_plaintext") {
        return Ok(());
    }
    let table = format!(
        "\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        files.ca.display().to_string(),
        files.cert.display().to_string(),
        files.key.display().to_string(),
    );
    std::fs::write(config, format!("{text}{table}"))?;
    Ok(())
}

/// Asks a service to stop (SIGTERM: it drains and flushes its outbox), killing it if it
/// has not stopped within ten seconds.
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Waits until the service accepts connections, or fails if it exits first.
async fn wait_ready(child: &mut Child, addr: &str) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(format!("the service exited during start-up ({status})").into());
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("the service did not listen on {addr} within 60 s").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates the demo clients and users directly in the issuer's database (the local
/// bootstrap path) and returns their credentials.
async fn create_demo(issuer_config: &Path, ports: Ports) -> Result<serde_json::Value, Error> {
    let demo_redirect = ports.demo_redirect();
    let (issuer_grpc, issuer_http) = (ports.issuer_grpc(), ports.issuer_http());
    let (validator_grpc, auditor_grpc) = (ports.validator_grpc(), ports.auditor_grpc());
    let config = IssuerConfig::load(Some(issuer_config), &BTreeMap::new())?;
    let issuer = trias_issuer::open(&config, Arc::new(trias_runtime::clock::SystemClock)).await?;
    let local = Actor::Local;
    let service = issuer
        .register_client(
            &local,
            ClientSpec {
                name: "demo payments service".into(),
                grant_types: [GrantType::ClientCredentials].into(),
                scopes: ["payments:read", "payments:create"]
                    .map(String::from)
                    .into(),
                ..ClientSpec::default()
            },
        )
        .await?;
    issuer
        .assign_role_locally(&service.client.client_id, "clerk")
        .await?;
    // A security team's service client: its tokens (audit:read at audience auditor) open
    // the auditor's queries, proofs and exports.
    let analyst = issuer
        .register_client(
            &local,
            ClientSpec {
                name: "demo security-team client".into(),
                grant_types: [GrantType::ClientCredentials].into(),
                scopes: ["audit:read"].map(String::from).into(),
                ..ClientSpec::default()
            },
        )
        .await?;
    issuer
        .assign_role_locally(&analyst.client.client_id, "security-analyst")
        .await?;
    let frontend = issuer
        .register_client(
            &local,
            ClientSpec {
                name: "demo frontend".into(),
                redirect_uris: vec![demo_redirect.clone()],
                grant_types: [GrantType::AuthorizationCode, GrantType::RefreshToken].into(),
                scopes: issuer.policy().scopes().map(String::from).collect(),
                public: true,
            },
        )
        .await?;
    let mut users = serde_json::Map::new();
    for (name, role, totp) in [
        ("alice", "clerk", false),
        ("bob", "approver", false),
        ("carol", "treasurer", false),
        ("dana", "security-analyst", false),
        ("admin1", "admin", true),
        ("admin2", "admin", true),
    ] {
        let password = format!("{name}-demo-password");
        let created = issuer.create_user(&local, name, &password, totp).await?;
        issuer
            .assign_role_locally(&created.user.user_id, role)
            .await?;
        users.insert(
            name.into(),
            json!({
                "user_id": created.user.user_id,
                "password": password,
                "role": role,
                "totp_secret": created.totp_secret,
            }),
        );
    }
    issuer.outbox().close().await;
    issuer.store().close().await;
    Ok(json!({
        "issuer_url": format!("http://{issuer_http}"),
        "issuer_grpc": format!("http://{issuer_grpc}"),
        "validator_grpc": format!("http://{validator_grpc}"),
        "auditor_grpc": format!("http://{auditor_grpc}"),
        "demo_client_id": service.client.client_id,
        "demo_client_secret": service.secret,
        "demo_analyst_client_id": analyst.client.client_id,
        "demo_analyst_client_secret": analyst.secret,
        "demo_frontend_client_id": frontend.client.client_id,
        "demo_redirect_uri": demo_redirect,
        "users": users,
    }))
}

fn write_stack(data_dir: &Path, stack: &serde_json::Value) -> Result<(), Error> {
    let text = |key: &str| stack[key].as_str().unwrap_or_default().to_owned();
    let mut env = String::from(
        "# Written by `trias up`: the local stack's endpoints and demo credentials.\n",
    );
    for (var, key) in [
        ("TRIAS_ISSUER_URL", "issuer_url"),
        ("TRIAS_ISSUER_GRPC", "issuer_grpc"),
        ("TRIAS_VALIDATOR_GRPC", "validator_grpc"),
        ("TRIAS_AUDITOR_GRPC", "auditor_grpc"),
        ("TRIAS_PKI", "pki"),
        ("TRIAS_DEMO_CLIENT_ID", "demo_client_id"),
        ("TRIAS_DEMO_CLIENT_SECRET", "demo_client_secret"),
        ("TRIAS_DEMO_ANALYST_CLIENT_ID", "demo_analyst_client_id"),
        (
            "TRIAS_DEMO_ANALYST_CLIENT_SECRET",
            "demo_analyst_client_secret",
        ),
        ("TRIAS_DEMO_FRONTEND_CLIENT_ID", "demo_frontend_client_id"),
        ("TRIAS_DEMO_REDIRECT_URI", "demo_redirect_uri"),
    ] {
        env.push_str(&format!("export {var}='{}'\n", text(key)));
    }
    if let Some(users) = stack["users"].as_object() {
        for (name, user) in users {
            let upper = name.to_uppercase();
            let field = |k: &str| user[k].as_str().unwrap_or_default().to_owned();
            env.push_str(&format!(
                "export TRIAS_DEMO_{upper}_ID='{}'\n",
                field("user_id")
            ));
            env.push_str(&format!(
                "export TRIAS_DEMO_{upper}_PASSWORD='{}'\n",
                field("password")
            ));
            if !field("totp_secret").is_empty() {
                env.push_str(&format!(
                    "export TRIAS_DEMO_{upper}_TOTP_SECRET='{}'\n",
                    field("totp_secret")
                ));
            }
        }
    }
    let write = |path: PathBuf, content: String| -> Result<(), Error> {
        std::fs::write(&path, content)?;
        private(&path, 0o600)
    };
    write(data_dir.join("stack.env"), env)?;
    write(
        data_dir.join("stack.json"),
        serde_json::to_string_pretty(stack)?,
    )?;
    Ok(())
}

fn private(path: &Path, mode: u32) -> Result<(), Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    let _ = (path, mode);
    Ok(())
}
