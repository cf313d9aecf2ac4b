//! A small W3C WebDriver client for the browser tests
//! (`#[path = "common/webdriver.rs"] mod webdriver;`): starts Debian's
//! `chromedriver` on a free loopback port, opens a headless `chromium`
//! session, and offers the few commands the tests use (navigate, find,
//! click, type, text, run a script, screenshot), each a JSON request
//! over HTTP (ureq).

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// The key of an element reference in WebDriver replies.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where Debian's packages put the browser and its driver.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// See [`CHROMIUM`].
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Whether the browser tests can run here; else why not. Under `CI` a
/// missing browser fails the test instead (`.ci/run` installs it).
pub fn available() -> Result<(), String> {
    for p in [CHROMIUM, CHROMEDRIVER] {
        if !std::path::Path::new(p).exists() {
            let why = format!("{p} is missing (apt-get install -y chromium chromium-driver)");
            if std::env::var_os("CI").is_some() {
                panic!("CI is set but {why}");
            }
            return Err(why);
        }
    }
    Ok(())
}

/// A running chromedriver and one browser session; both end on drop.
pub struct Browser {
    driver: Child,
    session: String,
    agent: ureq::Agent,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

impl Browser {
    /// Starts chromedriver and a headless chromium of `width`×`height`.
    pub fn start(width: u32, height: u32) -> Browser {
        let agent = agent();
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = agent
                .get(format!("{base}/status"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not become ready on {base}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--no-first-run",
                         format!("--window-size={width},{height}")],
            },
        }}});
        let mut b = Browser { driver, session: String::new(), agent };
        let v = b.raw("POST", &format!("{base}/session"), Some(&caps));
        let id = v["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}"));
        b.session = format!("{base}/session/{id}");
        b
    }

    fn raw(&self, method: &str, url: &str, body: Option<&Value>) -> Value {
        let resp = match (method, body) {
            ("GET", _) => self.agent.get(url).call(),
            ("DELETE", _) => self.agent.delete(url).call(),
            (_, b) => self.agent.post(url).send_json(b.cloned().unwrap_or_else(|| json!({}))),
        };
        let mut r = resp.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let v: Value = r.body_mut().read_json().unwrap_or(Value::Null);
        let v = v.get("value").cloned().unwrap_or(Value::Null);
        if let Some(err) = v.get("error") {
            panic!("WebDriver {method} {url}: {err}: {}", v["message"]);
        }
        v
    }

    fn cmd(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.raw(method, &format!("{}{path}", self.session), body)
    }

    /// Opens `url` (waits for the page's load event).
    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(&json!({"url": url})));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and
    /// returns what it returns.
    pub fn js(&self, script: &str, args: &[Value]) -> Value {
        self.cmd("POST", "/execute/sync", Some(&json!({"script": script, "args": args})))
    }

    /// The element matching the CSS `selector`, if any.
    pub fn find(&self, selector: &str) -> Option<String> {
        let url = format!("{}/elements", self.session);
        let v = self.raw("POST", &url, Some(&json!({"using": "css selector", "value": selector})));
        v.as_array()?.first()?.get(ELEMENT)?.as_str().map(str::to_string)
    }

    /// Polls until `selector` matches, failing after a minute.
    pub fn wait_for(&self, selector: &str) -> String {
        self.poll(&format!("an element {selector:?}"), || self.find(selector))
    }

    /// Polls `f` until Some, failing after a minute.
    pub fn poll<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The rendered text of `selector`'s first match ("" if none), read
    /// in one script so a page that redraws cannot make it stale.
    pub fn text(&self, selector: &str) -> String {
        let v = self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
            &[Value::String(selector.to_string())],
        );
        v.as_str().unwrap_or("").to_string()
    }

    /// Clicks `selector`'s first match (waiting for it).
    pub fn click(&self, selector: &str) {
        let e = self.wait_for(selector);
        self.cmd("POST", &format!("/element/{e}/click"), Some(&json!({})));
    }

    /// Replaces the value of the input `selector` with `text`.
    pub fn type_into(&self, selector: &str, text: &str) {
        let e = self.wait_for(selector);
        self.cmd("POST", &format!("/element/{e}/clear"), Some(&json!({})));
        self.cmd("POST", &format!("/element/{e}/value"), Some(&json!({"text": text})));
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        let v = self.cmd("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 screenshot"))
            .expect("decode screenshot")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.agent.delete(&self.session).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
