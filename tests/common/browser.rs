//! A real browser for tests: Debian's headless Chromium, driven through
//! chromedriver (WebDriver) with fantoccini. Each [`Browser`] starts its own
//! chromedriver on a free port, in a process group of its own, with a
//! fresh Chromium profile; dropping it ends that group (chromedriver and
//! the Chromium it started) and nothing else.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tempfile::TempDir;

use super::services::free_port;
use super::{wait_for_value, DEFAULT_TIMEOUT};

/// Debian's Chromium (`chromium`) and its WebDriver (`chromium-driver`),
/// installed by scripts/install-deps.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// The WebDriver of Debian's Chromium.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A headless Chromium session.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    driver: DriverGroup,
    dir: TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile and
    /// a `width` x `height` window.
    pub async fn open(width: u32, height: u32) -> Browser {
        assert!(
            Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
            "{CHROMIUM} and {CHROMEDRIVER} are needed: run scripts/install-deps"
        );
        let dir = tempfile::tempdir().expect("browser dir");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("chromedriver.log")).expect("log");
        let mut command = Command::new(CHROMEDRIVER);
        command
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let driver = DriverGroup {
            child: command.spawn().expect("start chromedriver"),
            log: dir.path().join("chromedriver.log"),
        };
        let mut browser_dir = dir.path().join("profile");
        std::fs::create_dir_all(&browser_dir).expect("profile dir");
        browser_dir = browser_dir.canonicalize().expect("profile dir");
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-default-apps",
                    "--disable-extensions",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--hide-scrollbars",
                    "--autoplay-policy=no-user-gesture-required",
                    "--force-device-scale-factor=1",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", browser_dir.display()),
                ],
            },
        });
        let capabilities = match capabilities {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
        let url = format!("http://127.0.0.1:{port}");
        let client = wait_for_value(DEFAULT_TIMEOUT, "chromedriver to start a session", || {
            let url = url.clone();
            let capabilities = capabilities.clone();
            async move {
                ClientBuilder::native()
                    .capabilities(capabilities)
                    .connect(&url)
                    .await
                    .ok()
            }
        })
        .await;
        let browser = Browser {
            client,
            driver,
            dir,
        };
        browser
            .client
            .set_window_size(width, height)
            .await
            .expect("window size");
        browser
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Runs `script` until it returns something other than `null`, `false`
    /// or `undefined`, and returns that; panics with `what` after `timeout`.
    pub async fn wait_js(&self, timeout: Duration, what: &str, script: &str) -> Value {
        wait_for_value(timeout, what, || async {
            let value = self.js(script).await;
            (!matches!(value, Value::Null | Value::Bool(false))).then_some(value)
        })
        .await
    }

    /// Clicks the element `css` names (found again if the page redrew it
    /// meanwhile); panics with `what` after `timeout`.
    pub async fn click(&self, timeout: Duration, what: &str, css: &str) {
        wait_for_value(timeout, what, || async {
            let element = self.client.find(Locator::Css(css)).await.ok()?;
            element.click().await.ok()
        })
        .await
    }

    /// Types `text` into the element `css` names.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
        element.clear().await.expect("clear");
        element.send_keys(text).await.expect("type");
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.expect("screenshot")
    }

    /// Whether an alert (or confirm, prompt) is open: a script ran that
    /// should not have.
    pub async fn alert_open(&self) -> bool {
        self.client.get_alert_text().await.is_ok()
    }

    /// Ends the session (Chromium quits), then chromedriver.
    pub async fn close(self) {
        let Browser {
            client,
            driver,
            dir,
        } = self;
        let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
        drop(driver);
        drop(dir);
    }
}

/// `python3 -m http.server` serving one folder on a free loopback port
/// (static files, as a CDN or a web server in front of the storage would
/// serve an HLS package); killed when dropped.
pub struct StaticServer {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl StaticServer {
    /// Serves `dir`, once the server answers.
    pub async fn serve(dir: &Path) -> StaticServer {
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3 -m http.server");
        let server = StaticServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let addr = format!("127.0.0.1:{port}");
        wait_for_value(DEFAULT_TIMEOUT, "the static file server", || async {
            tokio::net::TcpStream::connect(&addr).await.ok()
        })
        .await;
        server
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver, in a process group of its own: the group (chromedriver
/// and the Chromium it started) is killed when dropped.
struct DriverGroup {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for DriverGroup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- chromedriver log ---\n{log}");
        }
        // SAFETY: kill(2) of the process group this test made for its own
        // chromedriver (its pid is the group's id).
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}
