//! The README's first command and its tour, run as written: `trias up` as a process on a
//! fresh data directory, then the `trias` CLI against it — tokens, checks, the maker-checker
//! denial after a two-person role change, a refresh replay alert, the audit log queried and
//! verified — and a clean stop on SIGTERM, and a second start that reuses the directory.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::time::Duration;

use serde_json::Value;
use trias_tests::stack::{Stack, stderr, stdout};

/// Runs the CLI and returns stdout, asserting the exit code.
async fn expect(stack: &Stack, args: &[&str], stdin: &str, code: i32) -> String {
    let output = stack.cli(args, stdin).await;
    assert_eq!(
        output.status.code(),
        Some(code),
        "trias {args:?}\nstdout: {}\nstderr: {}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output).trim().to_owned()
}

/// A demo user's one-time code for now, computed by `trias totp` from stack.env's secret.
async fn totp(stack: &Stack, user: &str) -> String {
    let secret = stack.json["users"][user]["totp_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    expect(stack, &["totp", &secret], "", 0).await
}

/// `trias token --login` for a demo user through the demo frontend, password on stdin.
async fn login(
    stack: &Stack,
    user: &str,
    scope: &str,
    resource: &str,
    totp: Option<&str>,
) -> Value {
    let frontend = stack.get("demo_frontend_client_id");
    let redirect = stack.get("demo_redirect_uri");
    let password = format!("{user}-demo-password\n");
    let mut args = vec![
        "token",
        "--client-id",
        &frontend,
        "--redirect-uri",
        &redirect,
        "--login",
        user,
        "--password-stdin",
        "--scope",
        scope,
        "--json",
    ];
    if !resource.is_empty() {
        args.extend(["--resource", resource]);
    }
    if let Some(code) = totp {
        args.extend(["--totp", code]);
    }
    serde_json::from_str(&expect(stack, &args, &password, 0).await).unwrap()
}

/// Polls `trias audit query` until it returns at least `want` entries.
async fn query_until(stack: &Stack, token: &str, filters: &[&str], want: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut args = vec![
            "audit",
            "query",
            "--json",
            "--oldest-first",
            "--token",
            token,
        ];
        args.extend(filters);
        let out = expect(stack, &args, "", 0).await;
        let entries: Vec<Value> = out
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        if entries.len() >= want || tokio::time::Instant::now() > deadline {
            return entries;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_tour_runs_on_trias_up() {
    let stack = Stack::up(&[]).await;
    let client = stack.get("demo_client_id");
    let secret = stack.get("demo_client_secret");

    // A token for the demo payments service, and a check of it as the payments backend.
    let token = expect(
        &stack,
        &[
            "token",
            "--client-id",
            &client,
            "--client-secret",
            &secret,
            "--scope",
            "payments:create",
        ],
        "",
        0,
    )
    .await;
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let allowed = expect(
        &stack,
        &[
            "check",
            "--as",
            "payments",
            "--token",
            &token,
            "--action",
            "payment.create",
            "--resource",
            "payment/1",
            "--json",
        ],
        "",
        0,
    )
    .await;
    let allowed: Value = serde_json::from_str(&allowed).unwrap();
    assert_eq!(allowed["allowed"], true);
    assert_eq!(allowed["subject"], client.as_str());
    let token_id = allowed["token_id"].as_str().unwrap().to_owned();
    // Denied: exit code 1 and the reason.
    let denied = stack
        .cli(
            &[
                "check",
                "--as",
                "payments",
                "--token",
                &token,
                "--action",
                "payment.approve",
                "--resource",
                "payment/1",
            ],
            "",
        )
        .await;
    assert_eq!(denied.status.code(), Some(1), "{}", stderr(&denied));
    assert!(
        stdout(&denied).contains("insufficient_scope"),
        "{}",
        stdout(&denied)
    );
    // A revoked token is denied within a second.
    let doomed = expect(
        &stack,
        &[
            "token",
            "--client-id",
            &client,
            "--client-secret",
            &secret,
            "--scope",
            "payments:create",
        ],
        "",
        0,
    )
    .await;
    expect(
        &stack,
        &[
            "revoke",
            "--client-id",
            &client,
            "--client-secret",
            &secret,
            "--token",
            &doomed,
        ],
        "",
        0,
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let check = stack
            .cli(
                &[
                    "check",
                    "--as",
                    "payments",
                    "--token",
                    &doomed,
                    "--action",
                    "payment.create",
                    "--resource",
                    "payment/2",
                ],
                "",
            )
            .await;
        if stdout(&check).contains("revoked") {
            assert_eq!(check.status.code(), Some(1));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not revoked within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Static separation of duties at minting: exit code 1 with the OAuth error.
    let refused = stack
        .cli(
            &[
                "token",
                "--client-id",
                &client,
                "--client-secret",
                &secret,
                "--scope",
                "payments:create payments:approve",
            ],
            "",
        )
        .await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("invalid_scope"),
        "{}",
        stderr(&refused)
    );

    // The maker-checker rule: alice creates payment/7, moves from clerk to approver by a
    // two-person role change, and still may not approve what she created; bob may.
    let alice_id = stack.json["users"]["alice"]["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let alice = login(&stack, "alice", "payments:create", "", None).await;
    let alice_token = alice["access_token"].as_str().unwrap();
    let create = [
        "check",
        "--as",
        "payments",
        "--token",
        alice_token,
        "--action",
        "payment.create",
        "--resource",
        "payment/7",
    ];
    expect(&stack, &create, "", 0).await;
    let admin_scope = "admin:clients admin:users admin:roles admin:keys";
    let admin1_code = totp(&stack, "admin1").await;
    let admin1 = login(
        &stack,
        "admin1",
        admin_scope,
        "issuer-admin",
        Some(&admin1_code),
    )
    .await;
    let admin1 = admin1["access_token"].as_str().unwrap().to_owned();
    let admin2_code = totp(&stack, "admin2").await;
    let admin2 = login(
        &stack,
        "admin2",
        admin_scope,
        "issuer-admin",
        Some(&admin2_code),
    )
    .await;
    let admin2 = admin2["access_token"].as_str().unwrap().to_owned();
    expect(
        &stack,
        &[
            "admin",
            "--token",
            &admin1,
            "grants",
            "revoke",
            "--subject",
            &alice_id,
            "--role",
            "clerk",
        ],
        "",
        0,
    )
    .await;
    let requested = expect(
        &stack,
        &[
            "admin",
            "--token",
            &admin1,
            "grants",
            "request",
            "--subject",
            &alice_id,
            "--role",
            "approver",
            "--justification",
            "moved to approvals",
        ],
        "",
        0,
    )
    .await;
    assert!(requested.contains("pending"), "{requested}");
    let grant_id = requested.split_whitespace().next().unwrap().to_owned();
    // The requester cannot approve their own request.
    let self_approved = stack
        .cli(
            &["admin", "--token", &admin1, "grants", "approve", &grant_id],
            "",
        )
        .await;
    assert_eq!(
        self_approved.status.code(),
        Some(1),
        "{}",
        stderr(&self_approved)
    );
    let approved = expect(
        &stack,
        &["admin", "--token", &admin2, "grants", "approve", &grant_id],
        "",
        0,
    )
    .await;
    assert!(approved.contains("approved"), "{approved}");
    let users = expect(
        &stack,
        &["admin", "--token", &admin2, "users", "list"],
        "",
        0,
    )
    .await;
    assert!(
        users
            .lines()
            .any(|l| l.contains("alice") && l.contains("approver") && !l.contains("clerk")),
        "{users}"
    );
    // Clients and keys: a registered client's secret is shown once and the client listed;
    // a rotated key is listed beside the first.
    let registered = expect(
        &stack,
        &[
            "admin",
            "--token",
            &admin1,
            "clients",
            "register",
            "--name",
            "reports service",
            "--grant",
            "client-credentials",
            "--scope",
            "payments:read",
        ],
        "",
        0,
    )
    .await;
    let new_client = registered
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap();
    assert!(registered.contains("client_secret"), "{registered}");
    let clients = expect(
        &stack,
        &["admin", "--token", &admin1, "clients", "list"],
        "",
        0,
    )
    .await;
    assert!(
        clients.contains(new_client) && clients.contains("reports service"),
        "{clients}"
    );
    let rotated = expect(
        &stack,
        &["admin", "--token", &admin1, "keys", "rotate"],
        "",
        0,
    )
    .await;
    assert!(rotated.starts_with("new key "), "{rotated}");
    let keys = expect(
        &stack,
        &["admin", "--token", &admin1, "keys", "list"],
        "",
        0,
    )
    .await;
    assert_eq!(keys.lines().count(), 2, "{keys}");

    // Without the admin token's second factor the admin API refuses: a payments token.
    let not_admin = stack
        .cli(&["admin", "--token", alice_token, "users", "list"], "")
        .await;
    assert_eq!(not_admin.status.code(), Some(1), "{}", stderr(&not_admin));

    let alice = login(&stack, "alice", "payments:approve", "", None).await;
    let approve = |token: String| {
        [
            "check".to_owned(),
            "--as".into(),
            "payments".into(),
            "--token".into(),
            token,
            "--action".into(),
            "payment.approve".into(),
            "--resource".into(),
            "payment/7".into(),
        ]
    };
    let alice_approves = approve(alice["access_token"].as_str().unwrap().to_owned());
    let alice_approves: Vec<&str> = alice_approves.iter().map(String::as_str).collect();
    let conflict = stack.cli(&alice_approves, "").await;
    assert_eq!(conflict.status.code(), Some(1));
    assert!(
        stdout(&conflict).contains("duty_conflict"),
        "{}",
        stdout(&conflict)
    );
    let bob = login(&stack, "bob", "payments:approve", "", None).await;
    let bob_approves = approve(bob["access_token"].as_str().unwrap().to_owned());
    let bob_approves: Vec<&str> = bob_approves.iter().map(String::as_str).collect();
    expect(&stack, &bob_approves, "", 0).await;

    // A refresh replay: the second use of a spent refresh token is refused and alerts.
    let first = alice["refresh_token"].as_str().unwrap().to_owned();
    let frontend = stack.get("demo_frontend_client_id");
    let refresh = |token: &str| {
        vec![
            "token".to_owned(),
            "--client-id".into(),
            frontend.clone(),
            "--refresh-token".into(),
            token.to_owned(),
            "--json".into(),
        ]
    };
    let args = refresh(&first);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let rotated: Value = serde_json::from_str(&expect(&stack, &args, "", 0).await).unwrap();
    assert_ne!(rotated["refresh_token"].as_str().unwrap(), first);
    let replay = stack.cli(&args, "").await;
    assert_eq!(replay.status.code(), Some(1));
    assert!(
        stderr(&replay).contains("invalid_grant"),
        "{}",
        stderr(&replay)
    );

    // The security team's view: the issuance and the check of the first token, the
    // duty conflict, and the replay alert, from the log.
    let analyst = expect(
        &stack,
        &[
            "token",
            "--client-id",
            &stack.get("demo_analyst_client_id"),
            "--client-secret",
            &stack.get("demo_analyst_client_secret"),
            "--scope",
            "audit:read",
            "--resource",
            "auditor",
        ],
        "",
        0,
    )
    .await;
    let events = query_until(&stack, &analyst, &["--token-id", &token_id], 3).await;
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["decision"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("token_issued", "allow"),
            ("check", "allow"),
            ("check", "deny")
        ],
        "{events:#?}"
    );
    let conflicts = query_until(
        &stack,
        &analyst,
        &["--reason", "duty_conflict", "--kind", "check"],
        1,
    )
    .await;
    assert_eq!(conflicts.len(), 1, "{conflicts:#?}");
    assert_eq!(conflicts[0]["subject"], alice_id.as_str());
    assert_eq!(conflicts[0]["resource"], "payment/7");
    let watched = expect(
        &stack,
        &[
            "audit", "watch", "--token", &analyst, "--json", "--count", "1",
        ],
        "",
        0,
    )
    .await;
    let alerts = query_until(
        &stack,
        &analyst,
        &["--kind", "alert", "--reason", "refresh_reuse"],
        1,
    )
    .await;
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert!(!watched.is_empty());
    // The table form names its columns.
    let table = expect(
        &stack,
        &["audit", "query", "--token", &analyst, "--limit", "3"],
        "",
        0,
    )
    .await;
    assert!(table.starts_with("INDEX  TIME (UTC)"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");
    // Without a token the auditor refuses the query: exit code 1.
    let refused = stack.cli(&["audit", "query", "--token", &token], "").await;
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));

    // The log verifies against the auditor's key, read from the data directory.
    let data_dir = stack.data_dir.display().to_string();
    let key = expect(&stack, &["audit", "key", "--data-dir", &data_dir], "", 0).await;
    let saved = stack.data_dir.join("checkpoint.note");
    let saved = saved.display().to_string();
    let verified = expect(
        &stack,
        &[
            "audit", "verify", "--key", &key, "--token", &analyst, "--full", "--save", &saved,
        ],
        "",
        0,
    )
    .await;
    assert!(verified.contains("verified"), "{verified}");

    // Ctrl-C (SIGTERM here) stops every service; the producers flush their outboxes first.
    let base_port = stack.base_port;
    let dir = stack.data_dir.clone();
    let mut stack = stack;
    let stopped = stack.stop().await;
    assert!(stopped.status.success(), "{}", stderr(&stopped));
    assert!(stdout(&stopped).contains("stopped"), "{}", stdout(&stopped));
    for offset in [1, 2, 11, 12, 21] {
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", base_port + offset))
                .await
                .is_err(),
            "port +{offset} still open after stop"
        );
    }

    // A second run reuses the data directory: same credentials, the log kept and extending
    // the checkpoint saved before.
    let again = Stack::up_in(&dir, base_port, &[]).await;
    assert_eq!(again.get("demo_client_id"), client);
    let verified = expect(
        &again,
        &[
            "audit",
            "verify",
            "--key",
            &key,
            "--token",
            &analyst,
            "--previous",
            &saved,
        ],
        "",
        0,
    )
    .await;
    assert!(verified.contains("consistency: extends"), "{verified}");
    let mut again = again;
    assert!(again.stop().await.status.success());
    drop(stack);
}

/// A service refuses to start on a bad configuration, naming the key and where it came
/// from: the file and line, or the environment variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_is_refused_at_start_naming_the_key() {
    use trias_tests::stack::run_cli;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("issuer.toml");
    std::fs::write(
        &config,
        format!(
            "policy = {:?}\ndev_plaintext = true\naccess_token_ttl = \"2h\"\n",
            dir.path().join("policy.toml").display().to_string()
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("policy.toml"), trias_policy::SAMPLE).unwrap();
    let config = config.display().to_string();
    let serve = ["serve", "issuer", "--config", config.as_str()];

    let from_file = run_cli(&serve, &[], "").await;
    assert!(!from_file.status.success());
    let message = stderr(&from_file);
    assert!(
        message.contains("issuer.toml")
            && message.contains("key `access_token_ttl`: must be at most 1h"),
        "{message}"
    );

    std::fs::write(
        dir.path().join("issuer.toml"),
        format!(
            "policy = {:?}\ndev_plaintext = true\n",
            dir.path().join("policy.toml").display().to_string()
        ),
    )
    .unwrap();
    let env = [(
        "TRIAS_ISSUER_GRPC_ADDR".to_owned(),
        "not an address".to_owned(),
    )];
    let from_env = run_cli(&serve, &env, "").await;
    assert!(!from_env.status.success());
    let message = stderr(&from_env);
    assert!(
        message.contains("environment variable TRIAS_ISSUER_GRPC_ADDR")
            && message.contains("grpc_addr"),
        "{message}"
    );
}

/// `trias token --browser`: the CLI prints the login page's address and waits on the demo
/// frontend's loopback redirect URI; a real browser signs in there, and the CLI redeems the
/// code and prints the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trias_token_signs_in_through_the_login_page_in_a_browser() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    use trias_tests::webdriver::{Browser, browser_binaries};

    let Some(binaries) = browser_binaries() else {
        return;
    };
    let mut stack = Stack::up(&[]).await;
    let mut command = tokio::process::Command::new(trias_tests::stack::cli_binary());
    command
        .args([
            "token",
            "--browser",
            "--client-id",
            &stack.get("demo_frontend_client_id"),
            "--redirect-uri",
            &stack.get("demo_redirect_uri"),
            "--scope",
            "payments:create",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in stack.env() {
        command.env(key, value);
    }
    let mut cli = command.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(cli.stderr.take().unwrap()).lines();
    let url = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("the CLI ended before printing the login address");
        if let Some(url) = line
            .trim()
            .strip_prefix(&format!("{}/oauth2/authorize?", stack.get("issuer_url")))
        {
            break format!("{}/oauth2/authorize?{url}", stack.get("issuer_url"));
        }
    };

    let browser = Browser::start(&binaries).await;
    browser.goto(&url).await;
    browser
        .fill(&browser.element("#username").await, "alice")
        .await;
    browser
        .fill(&browser.element("#password").await, "alice-demo-password")
        .await;
    browser
        .click(&browser.element("button[type=submit]").await)
        .await;
    let status = tokio::time::timeout(Duration::from_secs(30), cli.wait())
        .await
        .expect("the CLI did not finish after the browser signed in")
        .unwrap();
    let mut token = String::new();
    cli.stdout
        .take()
        .unwrap()
        .read_to_string(&mut token)
        .await
        .unwrap();
    assert!(status.success(), "{status}: {token}");
    // The browser landed on the CLI's page, and the token is alice's.
    assert!(
        browser
            .url()
            .await
            .starts_with(&stack.get("demo_redirect_uri"))
    );
    browser.close().await;
    let claims = trias_tests::claims(token.trim());
    assert_eq!(claims["sub"], stack.json["users"]["alice"]["user_id"]);
    assert_eq!(claims["scope"], "payments:create");
    assert!(stack.stop().await.status.success());
}

/// SIGTERM while `trias up` is still starting its services: the signal is not lost and
/// does not kill `trias up` alone — every service it started is stopped, none left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_start_up_leaves_no_service_running() {
    use trias_tests::stack::{cli_binary, free_base_port, terminate};
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let mut up = tokio::process::Command::new(cli_binary())
        .args(["up", "--data-dir"])
        .arg(dir.path().join("trias"))
        .args(["--base-port", &base.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The auditor starts first: once it listens, the issuer and validator are on their way.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(("127.0.0.1", base + 21))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the auditor never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    terminate(&up).await;
    // Every service holds `trias up`'s stdout: it ends only when all of them have exited.
    let mut out = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(40), async {
        use tokio::io::AsyncReadExt;
        up.stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        up.wait().await.unwrap()
    })
    .await
    .expect("a service kept running after trias up was stopped during start-up");
    assert!(ended.success(), "{ended}: {out}");
    for offset in [1, 2, 11, 12, 21] {
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", base + offset))
                .await
                .is_err(),
            "port +{offset} still open"
        );
    }
}

/// JSON logs on request: with `log_json` set (here through `TRIAS_ISSUER_LOG_JSON`), the
/// issuer logs one JSON object per line; the other services keep their plain lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_logs_json_lines_on_request() {
    let mut stack = Stack::up(&[("TRIAS_ISSUER_LOG_JSON", "true")]).await;
    assert!(stack.stop().await.status.success());
    let logs = stack.logs();
    let json: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    assert!(
        json.iter()
            .any(|l| l["fields"]["message"] == "issuer listening"),
        "{logs}"
    );
    assert!(
        json.iter().all(|l| l["target"]
            .as_str()
            .is_some_and(|t| !t.starts_with("trias_validator"))),
        "{logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("validator")
                && serde_json::from_str::<serde_json::Value>(l).is_err()),
        "{logs}"
    );
}
