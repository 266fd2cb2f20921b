//! The suite as three separate service processes (`trias serve <service>`) on a data directory
//! `trias up` wrote, so a fault test can SIGKILL and restart one service while the others run
//! on, change a service's configuration between runs, and read the auditor's log at the end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use trias_proto::v1::auditor_client::AuditorClient;
use trias_proto::v1::validator_client::ValidatorClient;
use trias_proto::v1::{AuditEvent, ExportRequest};
use trias_runtime::access::Bearer;

use crate::stack::{Stack, cli_binary, free_base_port, terminate};

/// The three services, in the order they start.
pub const SERVICES: [&str; 3] = ["auditor", "issuer", "validator"];

/// A data directory written by `trias up`, and the service processes running on it.
#[derive(Debug)]
pub struct Suite {
    pub dir: PathBuf,
    /// `stack.json`: endpoints and demo credentials.
    pub json: Value,
    children: BTreeMap<&'static str, Child>,
    _temp: tempfile::TempDir,
}

impl Suite {
    /// Runs `trias up` once on a new directory (creating the configuration, the PKI and the
    /// demo clients) and stops it; no service runs until [`Suite::start`].
    pub async fn create() -> Suite {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("trias");
        let mut stack = Stack::up_in(&dir, free_base_port(), &[]).await;
        let json = stack.json.clone();
        let stopped = stack.stop().await;
        assert!(stopped.status.success(), "{}", stack.logs());
        Suite {
            dir,
            json,
            children: BTreeMap::new(),
            _temp: temp,
        }
    }

    /// A string field of `stack.json`.
    pub fn get(&self, key: &str) -> String {
        self.json[key]
            .as_str()
            .unwrap_or_else(|| panic!("stack.json has no {key}"))
            .to_owned()
    }

    pub fn pki(&self) -> PathBuf {
        PathBuf::from(self.get("pki"))
    }

    pub fn config_path(&self, service: &str) -> PathBuf {
        self.dir.join(format!("{service}.toml"))
    }

    /// Changes a service's configuration file (it takes effect at the service's next start).
    pub fn edit_config(&self, service: &str, edit: impl FnOnce(String) -> String) {
        let path = self.config_path(service);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, edit(text)).unwrap();
    }

    /// A top-level string setting of a service's configuration, such as `grpc_addr`.
    pub fn setting(&self, service: &str, key: &str) -> String {
        let text = std::fs::read_to_string(self.config_path(service)).unwrap();
        text.lines()
            .find_map(|line| {
                let (k, v) = line.split_once('=')?;
                (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
            })
            .unwrap_or_else(|| panic!("{service}.toml has no {key}"))
    }

    /// The service's log file (stdout and stderr of all its runs).
    pub fn log_path(&self, service: &str) -> PathBuf {
        self.dir.join(format!("{service}.log"))
    }

    pub fn log(&self, service: &str) -> String {
        std::fs::read_to_string(self.log_path(service)).unwrap_or_default()
    }

    /// The last `lines` lines of the service's log that mention one of `words`.
    pub fn log_lines(&self, service: &str, words: &[&str], lines: usize) -> String {
        let log = self.log(service);
        let all: Vec<&str> = log
            .lines()
            .filter(|line| words.iter().any(|w| line.contains(w)))
            .collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Starts `service` and waits until it accepts connections on its gRPC address.
    pub async fn start(&mut self, service: &'static str) {
        assert!(!self.children.contains_key(service), "{service} is running");
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.log_path(service))
            .unwrap();
        let mut child = Command::new(cli_binary())
            .args(["serve", service, "--config"])
            .arg(self.config_path(service))
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let addr = self.setting(service, "grpc_addr");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the {service} exited ({status}):\n{}", self.log(service));
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the {service} did not listen on {addr} within 60 s:\n{}",
                self.log(service)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.children.insert(service, child);
    }

    /// The process id of a running service.
    pub fn pid(&self, service: &str) -> u32 {
        self.children[service].id().unwrap()
    }

    pub async fn start_all(&mut self) {
        for service in SERVICES {
            self.start(service).await;
        }
    }

    /// SIGKILL: no destructor, no flush, no graceful shutdown.
    pub async fn kill(&mut self, service: &str) {
        let mut child = self.children.remove(service).unwrap();
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }

    /// SIGTERM, and the service must stop cleanly within 60 s.
    pub async fn stop(&mut self, service: &str) {
        let mut child = self.children.remove(service).unwrap();
        terminate(&child).await;
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .unwrap_or_else(|_| panic!("the {service} did not stop within 60 s of SIGTERM"))
            .unwrap();
        assert!(
            status.success(),
            "the {service} stopped with {status}:\n{}",
            self.log(service)
        );
    }

    /// Waits until the service's outbox has shipped everything (its `trias_outbox_depth`
    /// metric is 0); 60 s at most.
    pub async fn drained(&self, service: &str) {
        let metrics = self.setting(service, "metrics_addr").parse().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let depth = crate::scrape(metrics)
                .await
                .value("trias_outbox_depth", &[]);
            if depth == 0.0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the {service}'s outbox still holds {depth} events; its log about it:\n{}",
                self.log_lines(service, &["outbox", "ship", "audit"], 30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A validator client as the `payments` backend; calls time out after 2 s, so a load
    /// generator never hangs on a service that is gone.
    pub async fn validator(&self) -> ValidatorClient<Channel> {
        let url = self.get("validator_grpc");
        let endpoint = trias_cli::remote::transport(&self.pki(), "payments")
            .unwrap()
            .endpoint(&url, &trias_runtime::tls::identity_of("validator"))
            .unwrap()
            .timeout(Duration::from_secs(2));
        ValidatorClient::new(endpoint.connect_lazy())
    }

    /// An access token for the security team (`audit:read` at the auditor), from the issuer.
    pub async fn analyst_token(&self) -> String {
        let reply = reqwest::Client::new()
            .post(format!("{}/oauth2/token", self.get("issuer_url")))
            .basic_auth(
                self.get("demo_analyst_client_id"),
                Some(self.get("demo_analyst_client_secret")),
            )
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", "audit:read"),
                ("resource", "auditor"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200);
        let body: Value = reply.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    async fn auditor(&self, token: &str) -> AuditorClient<InterceptedService<Channel, Bearer>> {
        trias_cli::remote::auditor_client(&self.get("auditor_grpc"), &self.pki(), Some(token))
            .await
            .unwrap()
    }

    /// Every event in the auditor's log, in log order.
    pub async fn export(&self, token: &str) -> Vec<AuditEvent> {
        let mut stream = self
            .auditor(token)
            .await
            .export(ExportRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut events = Vec::new();
        while let Some(entry) = stream.message().await.unwrap() {
            events.push(entry.event.unwrap());
        }
        events
    }

    /// `trias audit verify --full` against the running auditor, with the verifier key read
    /// from its key file: the signed checkpoint, and the whole tree re-derived from an export.
    pub async fn verify_log(&self, token: &str) -> String {
        let mut key = Vec::new();
        trias_cli::audit::run_args(
            ["key", "--data-dir", &self.setting("auditor", "data_dir")],
            &mut key,
        )
        .await
        .unwrap();
        let key = String::from_utf8(key).unwrap();
        let mut report = Vec::new();
        trias_cli::audit::run_args(
            [
                "verify",
                "--auditor",
                &self.get("auditor_grpc"),
                "--key",
                key.trim(),
                "--full",
                "--pki",
                &self.pki().display().to_string(),
                "--token",
                token,
            ],
            &mut report,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", String::from_utf8_lossy(&report)));
        String::from_utf8(report).unwrap()
    }
}

/// A PostgreSQL server of a test's own (initdb into a temporary directory, on a free port), so
/// the test can restart it under load without disturbing the machine's server that the other
/// PostgreSQL suites share. Root runs it as the `postgres` user, as PostgreSQL requires.
#[derive(Debug)]
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    _temp: tempfile::TempDir,
}

impl PrivatePostgres {
    /// Initialises and starts the server; `Err` says why it cannot run here (no PostgreSQL
    /// binaries on the PATH, say).
    pub async fn start() -> Result<PrivatePostgres, String> {
        let temp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dir = temp.path().join("pgdata");
        if is_root() {
            // The postgres user must own the directory its cluster goes into.
            run(
                "chown",
                &["postgres", &temp.path().display().to_string()],
                false,
            )?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let server = PrivatePostgres {
            port,
            dir,
            _temp: temp,
        };
        let dir = server.dir.display().to_string();
        run(
            "initdb",
            &["-D", &dir, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            true,
        )?;
        server.pg_ctl("start")?;
        Ok(server)
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a database; `name` is the test's own constant, never outside input.
    pub async fn create_database(&self, name: &'static str) {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }

    /// Stops the server (fast: open connections are cut), waits `down`, and starts it again.
    pub async fn restart(&self, down: Duration) {
        self.pg_ctl("stop").unwrap();
        tokio::time::sleep(down).await;
        self.pg_ctl("start").unwrap();
    }

    fn pg_ctl(&self, action: &str) -> Result<(), String> {
        let dir = self.dir.display().to_string();
        let log = self.dir.with_extension("log").display().to_string();
        let options = format!(
            "-p {} -k {dir} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port
        );
        match action {
            "start" => run(
                "pg_ctl",
                &["-D", &dir, "-l", &log, "-o", &options, "-w", "start"],
                true,
            ),
            _ => run("pg_ctl", &["-D", &dir, "-m", "fast", "-w", action], true),
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let dir = self.dir.display().to_string();
        let _ = run(
            "pg_ctl",
            &["-D", &dir, "-m", "immediate", "-w", "stop"],
            true,
        );
    }
}

/// Whether this process runs as root (asked once).
fn is_root() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| {
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
    })
}

/// Runs a command (as the `postgres` user when `as_postgres` and running as root).
fn run(program: &str, args: &[&str], as_postgres: bool) -> Result<(), String> {
    let mut command = if as_postgres && is_root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        std::process::Command::new(program)
    };
    let output = command
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}
