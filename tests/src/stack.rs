//! `trias up` as the README runs it: the suite's own copy of the CLI binary started as a
//! process on a fresh data directory and a free block of ports, and the CLI run against it.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

/// The e2e suite's copy of the `trias` binary (the same code: `trias_cli::app::main`).
/// Cargo builds it beside the test binary's `deps/` directory for the package's integration
/// tests (`CARGO_BIN_EXE_trias-e2e-cli` names it, but only to the test crate itself).
pub fn cli_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("trias-e2e-cli"))
        .unwrap();
    assert!(
        path.exists(),
        "{} is missing: `cargo test -p trias-tests` builds it",
        path.display()
    );
    path
}

/// A running `trias up`: three service processes under one parent. [`Stack::stop`] stops it
/// as Ctrl-C does; dropping a running stack (a failed test) sends the same SIGTERM and waits
/// a little, since a SIGKILLed parent would leave its services running. The temporary data
/// directory lives as long as the `Stack`, also after `stop`, for a second run on it.
#[derive(Debug)]
pub struct Stack {
    /// The data directory (a temporary directory unless the test gave its own).
    pub data_dir: PathBuf,
    /// `stack.json` as `trias up` wrote it: endpoints and demo credentials.
    pub json: serde_json::Value,
    /// The base port (`--base-port`).
    pub base_port: u16,
    child: Option<Child>,
    _temp: Option<tempfile::TempDir>,
}

impl Stack {
    /// Starts `trias up` on a new temporary data directory and waits until every service
    /// listens and `stack.json` exists.
    pub async fn up(env: &[(&str, &str)]) -> Stack {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("trias");
        let mut stack = Stack::up_in(&dir, free_base_port(), env).await;
        stack._temp = Some(temp);
        stack
    }

    /// Starts `trias up` on `data_dir` (new or reused) with the given base port.
    pub async fn up_in(data_dir: &Path, base_port: u16, env: &[(&str, &str)]) -> Stack {
        let mut command = Command::new(cli_binary());
        command
            .arg("up")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--base-port")
            .arg(base_port.to_string())
            .stdin(Stdio::null())
            // What `trias up` prints; the services' logs (inherited stderr) go to a file, so
            // an unread pipe can never block them.
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(data_dir.with_extension("log")).unwrap(),
            ));
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        // Ready when the last service started (the validator, at +11) accepts connections
        // and the parent has written the stack's description.
        let last = format!("127.0.0.1:{}", base_port + 11);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("trias up exited during start-up: {status}");
            }
            let listening = tokio::net::TcpStream::connect(&last).await.is_ok();
            if listening && data_dir.join("stack.json").exists() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "trias up did not start within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let json =
            serde_json::from_str(&std::fs::read_to_string(data_dir.join("stack.json")).unwrap())
                .unwrap();
        Stack {
            data_dir: data_dir.to_path_buf(),
            json,
            base_port,
            child: Some(child),
            _temp: None,
        }
    }

    /// A string field of `stack.json`.
    pub fn get(&self, key: &str) -> String {
        self.json[key]
            .as_str()
            .unwrap_or_else(|| panic!("stack.json has no {key}"))
            .to_owned()
    }

    /// The environment `. stack.env` gives a shell, for running the CLI against the stack.
    pub fn env(&self) -> Vec<(String, String)> {
        stack_env(&self.data_dir)
    }

    /// Runs the CLI with `args` in the stack's environment (stack.env), with `stdin` fed in.
    pub async fn cli(&self, args: &[&str], stdin: &str) -> Output {
        run_cli(args, &self.env(), stdin).await
    }

    /// The services' logs so far (stderr of `trias up` and its services).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    /// Stops the stack with SIGTERM, as Ctrl-C would, and returns what `trias up` printed
    /// on stdout and its exit status (its logs are in [`Stack::logs`]).
    pub async fn stop(&mut self) -> Output {
        let child = self.child.take().expect("the stack was stopped already");
        terminate(&child).await;
        tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("trias up did not stop within 60 s after SIGTERM")
            .unwrap()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        for _ in 0..150 {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.start_kill();
    }
}

/// The environment `. <data_dir>/stack.env` gives a shell.
pub fn stack_env(data_dir: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(data_dir.join("stack.env")).unwrap();
    text.lines()
        .filter_map(|line| line.strip_prefix("export "))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.trim_matches('\'').to_owned()))
        .collect()
}

/// Runs the CLI with `args` and the given environment (and nothing else of `TRIAS_*` from
/// the test's own environment), feeding `stdin`.
pub async fn run_cli(args: &[&str], env: &[(String, String)], stdin: &str) -> Output {
    let mut command = Command::new(cli_binary());
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, _) in std::env::vars() {
        if key.starts_with("TRIAS_") {
            command.env_remove(key);
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the CLI did not finish within 60 s")
        .unwrap()
}

/// Sends SIGTERM to a child process.
pub async fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await
            .unwrap();
        assert!(status.success(), "kill -TERM {pid} failed");
    }
}

/// A base port whose stack ports (+1 … +80) are all free now, and that no other test of this
/// process was given (the tests run in parallel in one process: two could otherwise find the
/// same block free before either binds it).
pub fn free_base_port() -> u16 {
    use ring::rand::SecureRandom;
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let rng = ring::rand::SystemRandom::new();
    for _ in 0..500 {
        let mut bytes = [0u8; 2];
        rng.fill(&mut bytes).unwrap();
        // 20000 to 32600 in steps of 100: clear of the default 7400 and below Linux's
        // ephemeral ports (32768 and up), where the tests' own 127.0.0.1:0 listeners land.
        let base = 20_000 + (u16::from_le_bytes(bytes) % 127) * 100;
        let mut given = GIVEN.lock().unwrap();
        if given.contains(&base) {
            continue;
        }
        let free = (1..=80)
            .all(|offset| std::net::TcpListener::bind(("127.0.0.1", base + offset)).is_ok());
        if free {
            given.push(base);
            return base;
        }
    }
    panic!("no free block of 80 ports found");
}

/// stdout as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
