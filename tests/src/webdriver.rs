//! A minimal W3C WebDriver client (https://www.w3.org/TR/webdriver2/) driving a headless
//! Chromium through chromedriver, for the tests that need a real browser: the login page's
//! cookies, form submission and redirects as a user's browser performs them.
//!
//! Only what the tests use: a session, navigation, finding elements by CSS selector, typing,
//! clicking, reading text and the current URL. chromedriver is a child process of the test,
//! killed when [`Browser`] is dropped, after the session (and so Chromium) is closed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Set to `required` to make a missing browser fail the browser tests instead of skipping
/// them (CI sets it, after installing the browser).
pub const BROWSER_ENV: &str = "TRIAS_TEST_BROWSER";

/// The key of an element reference in a WebDriver response (W3C WebDriver §12.1).
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long any one WebDriver command, or chromedriver's start, may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long finding an element waits for it to appear (WebDriver's implicit wait). A click
/// that submits a form can return before the next page has replaced the current one, so a
/// lookup right after it must wait for the new page rather than search the old one.
const FIND_WAIT: Duration = Duration::from_secs(10);

/// Chromium and chromedriver, found on the `PATH`.
#[derive(Debug, Clone)]
pub struct BrowserBinaries {
    pub chromium: PathBuf,
    pub chromedriver: PathBuf,
}

/// Finds Chromium and chromedriver. If either is missing, prints why and returns `None` — or
/// panics when [`BROWSER_ENV`] is `required`.
pub fn browser_binaries() -> Option<BrowserBinaries> {
    let chromium = find_program(&["chromium", "chromium-browser"]);
    let chromedriver = find_program(&["chromedriver"]);
    match (chromium, chromedriver) {
        (Some(chromium), Some(chromedriver)) => Some(BrowserBinaries {
            chromium,
            chromedriver,
        }),
        (chromium, chromedriver) => {
            let missing: Vec<&str> = [
                chromium.is_none().then_some("chromium"),
                chromedriver.is_none().then_some("chromedriver"),
            ]
            .into_iter()
            .flatten()
            .collect();
            let why = format!("{} not found", missing.join(" and "));
            if std::env::var(BROWSER_ENV).is_ok_and(|v| v == "required") {
                panic!("{BROWSER_ENV}=required but {why} (install chromium chromium-driver)");
            }
            eprintln!("skipping browser test: {why} (install chromium chromium-driver)");
            None
        }
    }
}

/// The first of `names` that is an executable file in a directory of the `PATH`.
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A headless Chromium session through its own chromedriver.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    base: String,
    session: Option<String>,
    http: reqwest::Client,
    /// Chromium's profile, removed when the browser is dropped.
    profile: tempfile::TempDir,
}

/// An element found on the current page.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver on a free port and opens a headless Chromium session.
    pub async fn start(binaries: &BrowserBinaries) -> Browser {
        // Port 0: chromedriver binds a free port itself and names it, so no other process can
        // take the port between choosing and binding it.
        let mut driver = Command::new(&binaries.chromedriver)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // chromedriver says on stdout when (and where) it listens: ready without polling.
        let stdout = driver.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let port = tokio::time::timeout(COMMAND_TIMEOUT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some((_, rest)) = line.split_once("started successfully on port ") {
                    return rest.trim_end_matches('.').parse::<u16>().ok();
                }
            }
            None
        })
        .await;
        let Ok(Some(port)) = port else {
            panic!("chromedriver did not say it started: {port:?}");
        };
        // Keep draining its output, so a full pipe never blocks it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let profile = tempfile::tempdir().unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut browser = Browser {
            driver,
            addr,
            base: format!("http://{addr}"),
            session: None,
            http: reqwest::Client::builder()
                .timeout(COMMAND_TIMEOUT)
                .build()
                .unwrap(),
            profile,
        };
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                "timeouts": { "implicit": FIND_WAIT.as_secs() * 1000 },
                    "goog:chromeOptions": {
                        "binary": binaries.chromium.display().to_string(),
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            format!("--user-data-dir={}", browser.profile.path().display()),
                        ],
                    },
                },
            },
        });
        let created = browser
            .command("POST", "/session", Some(capabilities))
            .await;
        let session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {created}"));
        browser.session = Some(session.to_owned());
        browser
    }

    /// Sends one command; returns its `value`, panicking with the WebDriver error if any.
    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self
                .http
                .post(&url)
                .json(&body.unwrap_or_else(|| json!({}))),
        };
        let response = request.send().await.unwrap();
        let status = response.status();
        let reply: Value = response.json().await.unwrap();
        assert!(
            status.is_success(),
            "webdriver {method} {path} failed ({status}): {}",
            reply["value"]
        );
        reply["value"].clone()
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session.as_deref().unwrap_or(""))
    }

    /// Navigates to `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.command(
            "POST",
            &self.session_path("/url"),
            Some(json!({ "url": url })),
        )
        .await;
    }

    /// The URL of the current page.
    pub async fn url(&self) -> String {
        let value = self.command("GET", &self.session_path("/url"), None).await;
        value.as_str().unwrap_or_default().to_owned()
    }

    /// The first element matching a CSS selector, waiting up to `FIND_WAIT` for one to
    /// appear, or `None`.
    pub async fn find(&self, selector: &str) -> Option<Element> {
        let url = format!("{}{}", self.base, self.session_path("/element"));
        let body = json!({ "using": "css selector", "value": selector });
        let response = self.http.post(url).json(&body).send().await.unwrap();
        let found = response.status().is_success();
        let reply: Value = response.json().await.unwrap();
        if !found {
            assert_eq!(
                reply["value"]["error"], "no such element",
                "finding {selector} failed: {reply}"
            );
            return None;
        }
        let id = reply["value"][ELEMENT_KEY].as_str().unwrap();
        Some(Element(id.to_owned()))
    }

    /// The first element matching a CSS selector; panics if there is none.
    pub async fn element(&self, selector: &str) -> Element {
        self.find(selector)
            .await
            .unwrap_or_else(|| panic!("no element matches {selector}"))
    }

    /// Clears an input and types `text` into it.
    pub async fn fill(&self, element: &Element, text: &str) {
        let path = self.session_path(&format!("/element/{}", element.0));
        self.command("POST", &format!("{path}/clear"), None).await;
        self.command(
            "POST",
            &format!("{path}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Clicks an element. A click that submits a form may return before the next page has
    /// loaded; [`Browser::element`] waits for it (see `FIND_WAIT`).
    pub async fn click(&self, element: &Element) {
        let path = self.session_path(&format!("/element/{}/click", element.0));
        self.command("POST", &path, None).await;
    }

    /// The rendered text of an element.
    pub async fn text(&self, element: &Element) -> String {
        let path = self.session_path(&format!("/element/{}/text", element.0));
        let value = self.command("GET", &path, None).await;
        value.as_str().unwrap_or_default().to_owned()
    }

    /// The value of an element's property (such as an input's `value`).
    pub async fn property(&self, element: &Element, name: &str) -> Value {
        let path = self.session_path(&format!("/element/{}/property/{name}", element.0));
        self.command("GET", &path, None).await
    }

    /// Ends the session, which quits Chromium.
    pub async fn close(mut self) {
        if self.session.is_some() {
            self.command("DELETE", &self.session_path(""), None).await;
            self.session = None;
        }
    }
}

impl Drop for Browser {
    /// A test that failed before [`Browser::close`] still quits Chromium: the session is
    /// deleted with a blocking request (no runtime is needed in `drop`), then chromedriver is
    /// killed (`kill_on_drop`).
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let Ok(mut stream) = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)) else {
            return;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let request = format!(
            "DELETE /session/{session} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.addr
        );
        if stream.write_all(request.as_bytes()).is_ok() {
            // The reply means Chromium has quit; chromedriver may keep the connection open.
            let mut reply = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = stream.read(&mut chunk) {
                reply.extend_from_slice(&chunk[..n]);
                if is_complete(&reply) {
                    break;
                }
            }
        }
        let _ = self.driver.start_kill();
    }
}

/// Whether `reply` holds a whole HTTP response with a `Content-Length` body.
fn is_complete(reply: &[u8]) -> bool {
    let text = String::from_utf8_lossy(reply);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    length.is_some_and(|length| body.len() >= length)
}
