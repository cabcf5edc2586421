//! A real browser for the tests of Switchboard's pages: headless Chromium, driven through
//! ChromeDriver's WebDriver API (scripts/chromium.sh starts it).

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::harness::shared_peer;

/// The element reference's key in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A running ChromeDriver.
pub struct Chromium {
    webdriver: String,
    chromium: String,
}

/// The ChromeDriver of this test run: the one `SWITCHBOARD_TEST_CHROMIUM_DIR` names, or one
/// started for the tests.
pub fn chromium() -> &'static Chromium {
    static C: OnceLock<Chromium> = OnceLock::new();
    C.get_or_init(|| {
        shared_peer(
            "SWITCHBOARD_TEST_CHROMIUM_DIR",
            "chromium",
            false,
            10,
            Chromium::attach,
        )
    })
}

impl Chromium {
    fn attach(dir: &Path) -> Option<Chromium> {
        let state: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).ok()?).ok()?;
        let webdriver = state["webdriver"].as_str()?.to_string();
        std::net::TcpStream::connect(webdriver.strip_prefix("http://")?).ok()?;
        Some(Chromium {
            webdriver,
            chromium: state["chromium"].as_str()?.to_string(),
        })
    }

    /// A new browser window of its own (no cookies, no cache).
    pub async fn session(&self) -> Result<Browser> {
        let http = reqwest::Client::new();
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": self.chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1280,800"],
        }}}});
        let r: Value = http
            .post(format!("{}/session", self.webdriver))
            .json(&caps)
            .send()
            .await?
            .json()
            .await?;
        let id = r["value"]["sessionId"]
            .as_str()
            .with_context(|| format!("no browser session: {r}"))?;
        Ok(Browser {
            base: format!("{}/session/{id}", self.webdriver),
            http,
        })
    }
}

/// One browser session; closed when dropped.
pub struct Browser {
    base: String,
    http: reqwest::Client,
}

impl Browser {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r: Value = req.send().await?.json().await?;
        if let Some(error) = r["value"]["error"].as_str() {
            bail!("{path}: {error}: {}", r["value"]["message"]);
        }
        Ok(r["value"].clone())
    }

    /// Sends every request of this session with these headers too (as a browser that was
    /// given a login sends it).
    pub async fn headers(&self, headers: Value) -> Result<()> {
        let cdp = |cmd: &str, params: Value| {
            self.call(
                reqwest::Method::POST,
                "/goog/cdp/execute",
                Some(json!({"cmd": cmd, "params": params})),
            )
        };
        cdp("Network.enable", json!({})).await?;
        cdp("Network.setExtraHTTPHeaders", json!({"headers": headers})).await?;
        Ok(())
    }

    pub async fn open(&self, url: &str) -> Result<()> {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await?;
        Ok(())
    }

    /// The page's HTML as the browser has it now.
    pub async fn source(&self) -> Result<String> {
        let v = self.call(reqwest::Method::GET, "/source", None).await?;
        Ok(v.as_str().context("source")?.to_string())
    }

    /// The visible text of the first element `css` selects.
    pub async fn text(&self, css: &str) -> Result<String> {
        let id = self.find(css).await?;
        let v = self
            .call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await?;
        Ok(v.as_str().context("text")?.to_string())
    }

    /// Clicks the first element `css` selects. A page it leads to may not be there yet.
    pub async fn click(&self, css: &str) -> Result<()> {
        let id = self.find(css).await?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await?;
        Ok(())
    }

    async fn find(&self, css: &str) -> Result<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        Ok(v[ELEMENT].as_str().context("element")?.to_string())
    }

    /// The window as a PNG.
    pub async fn screenshot(&self) -> Result<Vec<u8>> {
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await?;
        Ok(base64::engine::general_purpose::STANDARD.decode(v.as_str().context("png")?)?)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The session's Chromium ends with it; blocking is fine in a test's teardown.
        let _ = std::process::Command::new("curl")
            .args(["-s", "-X", "DELETE", &self.base])
            .output();
    }
}
