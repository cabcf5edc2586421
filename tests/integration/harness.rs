//! Real servers for the integration tests: a Synapse started by `scripts/synapse.sh`, users
//! registered through its shared-secret admin API, PostgreSQL databases made per test, and
//! Switchboard itself run as the binary a user runs.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hmac::{Hmac, Mac};
use rand::Rng;
use serde_json::{Value, json};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn suffix() -> String {
    let n: u64 = rand::rng().random();
    format!("{n:012x}")[..10].to_string()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The secret of the homeserver's shared-secret login module in every test Synapse.
pub const SHARED_SECRET: &str = "switchboard-test-login-secret";

/// A Synapse on loopback.
pub struct Synapse {
    pub base_url: String,
    pub data_dir: PathBuf,
    secret: String,
    /// Stop it when dropped (dedicated instances only).
    owned: bool,
}

/// The Synapse shared by all tests: the one `scripts/test.sh` started (named by
/// `SWITCHBOARD_TEST_SYNAPSE_DIR`), or one started here and left running for the next run.
pub fn synapse() -> &'static Synapse {
    static S: OnceLock<Synapse> = OnceLock::new();
    S.get_or_init(|| {
        let dir = std::env::var("SWITCHBOARD_TEST_SYNAPSE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| std::env::temp_dir().join("switchboard-test-synapse"));
        if let Some(s) = Synapse::attach(&dir) {
            return s;
        }
        Synapse::start(&dir, free_port(), false).expect("start the shared Synapse")
    })
}

impl Synapse {
    /// Uses an instance that already runs on `dir`.
    fn attach(dir: &Path) -> Option<Synapse> {
        let base_url = std::fs::read_to_string(dir.join("base_url")).ok()?;
        let base_url = base_url.trim().to_string();
        let addr = base_url.strip_prefix("http://")?;
        std::net::TcpStream::connect(addr).ok()?;
        Some(Synapse {
            base_url,
            secret: read_secret(dir).ok()?,
            data_dir: dir.to_owned(),
            owned: false,
        })
    }

    /// Starts an instance (fresh data) on `port`.
    pub fn start(dir: &Path, port: u16, owned: bool) -> Result<Synapse> {
        let out = Command::new(repo().join("scripts/synapse.sh"))
            .args([
                "start",
                "--fresh",
                "--port",
                &port.to_string(),
                "--data-dir",
            ])
            .arg(dir)
            .stderr(Stdio::inherit())
            .output()
            .context("run scripts/synapse.sh")?;
        if !out.status.success() {
            bail!("scripts/synapse.sh start failed");
        }
        let info: Value = serde_json::from_slice(&out.stdout)?;
        Ok(Synapse {
            base_url: info["base_url"].as_str().context("base_url")?.to_string(),
            secret: info["registration_shared_secret"]
                .as_str()
                .context("secret")?
                .to_string(),
            data_dir: dir.to_owned(),
            owned,
        })
    }

    /// Starts it again on the same data (after `stop`).
    pub fn restart(&self) -> Result<()> {
        let port = self.base_url.rsplit(':').next().context("port")?;
        let ok = Command::new(repo().join("scripts/synapse.sh"))
            .args([
                "start",
                "--port",
                port,
                "--shared-secret-auth",
                SHARED_SECRET,
                "--data-dir",
            ])
            .arg(&self.data_dir)
            .stdout(Stdio::null())
            .status()?
            .success();
        if !ok {
            bail!("restart failed");
        }
        Ok(())
    }

    pub fn stop(&self) {
        let _ = Command::new(repo().join("scripts/synapse.sh"))
            .args(["stop", "--data-dir"])
            .arg(&self.data_dir)
            .status();
    }

    /// Registers a user with a random suffix and logs it in.
    pub async fn user(&self, prefix: &str) -> Result<User> {
        self.register(prefix, false).await
    }

    /// A new user who is a server admin.
    pub async fn admin(&self, prefix: &str) -> Result<User> {
        self.register(prefix, true).await
    }

    async fn register(&self, prefix: &str, admin: bool) -> Result<User> {
        let localpart = format!("{prefix}_{}", suffix());
        let password = format!("pw-{}", suffix());
        let http = reqwest::Client::new();
        let nonce: Value = http
            .get(format!("{}/_synapse/admin/v1/register", self.base_url))
            .send()
            .await?
            .json()
            .await?;
        let nonce = nonce["nonce"].as_str().context("nonce")?;
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(self.secret.as_bytes())?;
        let kind = if admin { "admin" } else { "notadmin" };
        mac.update(format!("{nonce}\0{localpart}\0{password}\0{kind}").as_bytes());
        let resp = http
            .post(format!("{}/_synapse/admin/v1/register", self.base_url))
            .json(&json!({
                "nonce": nonce, "username": localpart, "password": password, "admin": admin,
                "mac": hex::encode(mac.finalize().into_bytes()),
            }))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("register {localpart}: {}", resp.text().await?);
        }
        let login: Value = http
            .post(format!("{}/_matrix/client/v3/login", self.base_url))
            .json(&json!({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": localpart},
                "password": password,
            }))
            .send()
            .await?
            .json()
            .await?;
        Ok(User {
            user_id: login["user_id"].as_str().context("user_id")?.to_string(),
            token: login["access_token"].as_str().context("token")?.to_string(),
            password,
            base_url: self.base_url.clone(),
            http,
        })
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        if self.owned {
            self.stop();
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

fn read_secret(dir: &Path) -> Result<String> {
    let env = std::fs::read_to_string(dir.join("secrets.env"))?;
    env.lines()
        .find_map(|l| l.strip_prefix("REG_SECRET="))
        .map(|s| s.trim().to_string())
        .context("REG_SECRET in secrets.env")
}

/// A Matrix user the test acts as, through the plain client-server API.
pub struct User {
    pub user_id: String,
    pub token: String,
    pub password: String,
    base_url: String,
    http: reqwest::Client,
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl User {
    async fn get(&self, path: &str) -> Result<(u16, Value)> {
        let r = self
            .http
            .get(format!("{}/_matrix/client{path}", self.base_url))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    async fn send_json(&self, method: reqwest::Method, path: &str, body: &Value) -> Result<Value> {
        let r = self
            .http
            .request(method, format!("{}/_matrix/client{path}", self.base_url))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{path}: {status} {v}");
        }
        Ok(v)
    }

    /// Creates a room (`body` as `createRoom` takes it); returns its ID.
    /// Gives `user` this e-mail address, as a server admin does (Synapse's admin API).
    pub async fn set_email(&self, user: &str, email: &str) -> Result<()> {
        let resp = self
            .http
            .put(format!("{}/_synapse/admin/v2/users/{user}", self.base_url))
            .bearer_auth(&self.token)
            .json(&json!({"threepids": [{"medium": "email", "address": email}]}))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("set the e-mail address of {user}: {}", resp.text().await?);
        }
        Ok(())
    }

    pub async fn create_room(&self, body: Value) -> Result<String> {
        let v = self
            .send_json(reqwest::Method::POST, "/v3/createRoom", &body)
            .await?;
        Ok(v["room_id"].as_str().context("room_id")?.to_string())
    }

    /// Joins a room this user is invited to.
    pub async fn join(&self, room: &str) -> Result<()> {
        let path = format!("/v3/rooms/{}/join", enc(room));
        self.send_json(reqwest::Method::POST, &path, &json!({}))
            .await?;
        Ok(())
    }

    /// Sends a message with this content; returns its event ID.
    pub async fn send(&self, room: &str, content: Value) -> Result<String> {
        let path = format!("/v3/rooms/{}/send/m.room.message/{}", enc(room), suffix());
        let v = self
            .send_json(reqwest::Method::PUT, &path, &content)
            .await?;
        Ok(v["event_id"].as_str().context("event_id")?.to_string())
    }

    /// Sends an event of `kind` with this content; returns its event ID.
    pub async fn send_event(&self, room: &str, kind: &str, content: Value) -> Result<String> {
        let path = format!("/v3/rooms/{}/send/{kind}/{}", enc(room), suffix());
        let v = self
            .send_json(reqwest::Method::PUT, &path, &content)
            .await?;
        Ok(v["event_id"].as_str().context("event_id")?.to_string())
    }

    /// Sets one of this user's global account data entries.
    pub async fn set_account_data(&self, kind: &str, content: Value) -> Result<()> {
        let path = format!("/v3/user/{}/account_data/{}", enc(&self.user_id), enc(kind));
        self.send_json(reqwest::Method::PUT, &path, &content)
            .await?;
        Ok(())
    }

    /// Removes `user` from a room.
    pub async fn kick(&self, room: &str, user: &str) -> Result<()> {
        self.moderate(room, "kick", user).await
    }

    /// Kicks (`kick`), bans (`ban`) or unbans (`unban`) `user` in a room.
    pub async fn moderate(&self, room: &str, what: &str, user: &str) -> Result<()> {
        let path = format!("/v3/rooms/{}/{what}", enc(room));
        self.send_json(reqwest::Method::POST, &path, &json!({"user_id": user}))
            .await?;
        Ok(())
    }

    /// Redacts an event; returns the redaction's event ID.
    pub async fn redact(&self, room: &str, event: &str) -> Result<String> {
        let path = format!("/v3/rooms/{}/redact/{}/{}", enc(room), enc(event), suffix());
        let v = self
            .send_json(reqwest::Method::PUT, &path, &json!({}))
            .await?;
        Ok(v["event_id"].as_str().context("event_id")?.to_string())
    }

    /// A state event's content, if set.
    pub async fn state(&self, room: &str, kind: &str) -> Result<Option<Value>> {
        let (status, v) = self
            .get(&format!("/v3/rooms/{}/state/{kind}/", enc(room)))
            .await?;
        Ok((status == 200).then_some(v))
    }

    /// `user`'s membership of `room` (`join`, `invite`, `leave`, ...), if they ever had one.
    pub async fn membership(&self, room: &str, user: &str) -> Result<Option<String>> {
        let (status, v) = self
            .get(&format!(
                "/v3/rooms/{}/state/m.room.member/{}",
                enc(room),
                enc(user)
            ))
            .await?;
        Ok((status == 200).then(|| v["membership"].as_str().unwrap_or_default().to_string()))
    }

    /// All events of a room's timeline, oldest first.
    pub async fn timeline(&self, room: &str) -> Result<Vec<Value>> {
        let mut events = Vec::new();
        let mut from: Option<String> = None;
        loop {
            let mut path = format!("/v3/rooms/{}/messages?dir=f&limit=1000", enc(room));
            if let Some(f) = &from {
                path.push_str(&format!("&from={}", enc(f)));
            }
            let (status, v) = self.get(&path).await?;
            if status != 200 {
                bail!("messages: {status} {v}");
            }
            let chunk = v["chunk"].as_array().cloned().unwrap_or_default();
            if chunk.is_empty() {
                break;
            }
            events.extend(chunk);
            match v["end"].as_str() {
                Some(e) => from = Some(e.to_string()),
                None => break,
            }
        }
        Ok(events)
    }

    /// Bodies of the `m.room.message` events in a room, oldest first.
    pub async fn messages(&self, room: &str) -> Result<Vec<String>> {
        Ok(self
            .timeline(room)
            .await?
            .iter()
            .filter(|e| e["type"] == "m.room.message")
            .filter_map(|e| e["content"]["body"].as_str().map(String::from))
            .collect())
    }

    /// The content of a media file (`mxc://server/id`), downloaded as this user.
    /// Uploads a file to the media repository; its mxc URI.
    pub async fn upload(&self, data: Vec<u8>, content_type: &str) -> Result<String> {
        let r = self
            .http
            .post(format!("{}/_matrix/media/v3/upload", self.base_url))
            .bearer_auth(&self.token)
            .header("Content-Type", content_type)
            .body(data)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("upload: {}", r.status());
        }
        let v: Value = r.json().await?;
        Ok(v["content_uri"]
            .as_str()
            .context("content_uri")?
            .to_string())
    }

    pub async fn download(&self, mxc: &str) -> Result<Vec<u8>> {
        let path = mxc.strip_prefix("mxc://").context("an mxc URI")?;
        let r = self
            .http
            .get(format!(
                "{}/_matrix/client/v1/media/download/{path}",
                self.base_url
            ))
            .bearer_auth(&self.token)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("download {mxc}: {}", r.status());
        }
        Ok(r.bytes().await?.to_vec())
    }

    /// Rooms this user is invited to.
    pub async fn invites(&self) -> Result<Vec<String>> {
        let (_, v) = self.get("/v3/sync?timeout=0").await?;
        Ok(v["rooms"]["invite"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default())
    }

    /// This user's device IDs, sorted.
    pub async fn devices(&self) -> Result<Vec<String>> {
        let (_, v) = self.get("/v3/devices").await?;
        let mut ids: Vec<String> = v["devices"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d["device_id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        Ok(ids)
    }

    /// Rooms this user has joined.
    pub async fn joined_rooms(&self) -> Result<Vec<String>> {
        let (_, v) = self.get("/v3/joined_rooms").await?;
        Ok(v["joined_rooms"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// Where a test's Switchboard keeps its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    /// A fresh PostgreSQL database.
    Postgres,
    /// A PostgreSQL database by URL (to share one between processes).
    PostgresAt(String),
}

/// A fresh PostgreSQL database; its URL.
pub async fn postgres_db() -> Result<String> {
    use sqlx::Connection;
    let base = std::env::var("SWITCHBOARD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let name = format!("switchboard_test_{}", suffix());
    let mut conn = sqlx::PgConnection::connect(&format!("{base}/postgres")).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    Ok(format!("{base}/{name}"))
}

/// A Switchboard process run from a config file, as a user runs it.
pub struct Switchboard {
    pub dir: PathBuf,
    pub base: String,
    /// None: no config file; `env` configures it (the Honoroit drop-in).
    config: Option<PathBuf>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    http: reqwest::Client,
}

/// A test's setup: the bot, the config's database and extra TOML.
pub struct Setup<'a> {
    pub synapse: &'a Synapse,
    pub bot: &'a User,
    pub db: Db,
    /// TOML appended after `[matrix]`'s keys and the default source `tickets`.
    pub extra: String,
    pub encryption: bool,
    /// The login lines of `[matrix]`; the bot's password when None.
    pub login: Option<String>,
}

impl Switchboard {
    pub async fn start(setup: Setup<'_>) -> Result<Switchboard> {
        let dir = std::env::temp_dir().join(format!("switchboard-it-{}", suffix()));
        std::fs::create_dir_all(&dir)?;
        let port = free_port();
        let db_line = match setup.db {
            Db::Sqlite => String::new(),
            Db::Postgres => format!("[database]\nurl = \"{}\"\n", postgres_db().await?),
            Db::PostgresAt(url) => format!("[database]\nurl = \"{url}\"\n"),
        };
        let config = format!(
            "data_dir = \"{data}\"\n\n[http]\nlisten = \"127.0.0.1:{port}\"\nlink_base = \"https://matrix.to/#/\"\n\n{db_line}\n\
             [matrix]\nhomeserver = \"{hs}\"\nuser = \"{user}\"\n{login}\nencryption = {enc}\n\n\
             [sources.tickets]\nkind = \"webhook\"\n{extra}\n",
            data = dir.join("data").display(),
            hs = setup.synapse.base_url,
            user = setup.bot.user_id,
            login = setup
                .login
                .unwrap_or_else(|| format!("password = \"{}\"", setup.bot.password)),
            enc = setup.encryption,
            extra = setup.extra,
        );
        let config_path = dir.join("switchboard.toml");
        std::fs::write(&config_path, config)?;
        let mut sb = Switchboard {
            base: format!("http://127.0.0.1:{port}"),
            dir,
            config: Some(config_path),
            env: Vec::new(),
            child: None,
            http: reqwest::Client::new(),
        };
        sb.spawn().await?;
        Ok(sb)
    }

    /// Starts a process with no config file, configured by `env` alone, listening on `port`.
    pub async fn start_env(env: Vec<(String, String)>, port: u16) -> Result<Switchboard> {
        let dir = std::env::temp_dir().join(format!("switchboard-it-{}", suffix()));
        std::fs::create_dir_all(&dir)?;
        let mut sb = Switchboard {
            base: format!("http://127.0.0.1:{port}"),
            dir,
            config: None,
            env,
            child: None,
            http: reqwest::Client::new(),
        };
        sb.spawn().await?;
        Ok(sb)
    }

    /// Sets a top-level config key (a TOML value), replacing an earlier one; takes effect at
    /// the next `spawn`.
    pub fn set_top_level(&self, key: &str, value: &str) -> Result<()> {
        let config = self.config.as_ref().context("no config file")?;
        let text = std::fs::read_to_string(config)?;
        let rest: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with(&format!("{key} =")))
            .collect();
        std::fs::write(config, format!("{key} = {value}\n{}\n", rest.join("\n")))?;
        Ok(())
    }

    /// A value of the `settings` table of the process's SQLite database.
    pub async fn sqlite_setting(&self, key: &str) -> Result<Option<String>> {
        use sqlx::{Connection, Row};
        let url = format!(
            "sqlite://{}",
            self.dir.join("data/switchboard.db").display()
        );
        let mut conn = sqlx::SqliteConnection::connect(&url).await?;
        let row = sqlx::query("SELECT value FROM settings WHERE key = ?")
            .bind(key)
            .fetch_optional(&mut conn)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The room linked to a ticket in the process's SQLite database (unlike `room_in`, never
    /// asks for one).
    pub async fn sqlite_room(&self, source: &str, ticket: &str) -> Result<Option<String>> {
        use sqlx::{Connection, Row};
        let url = format!(
            "sqlite://{}",
            self.dir.join("data/switchboard.db").display()
        );
        let mut conn = sqlx::SqliteConnection::connect(&url).await?;
        let row = sqlx::query("SELECT room_id FROM links WHERE source_id = ? AND ticket_key = ?")
            .bind(source)
            .bind(ticket)
            .fetch_optional(&mut conn)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The results of a ticket's finished actions in the process's SQLite database, oldest
    /// first.
    pub async fn sqlite_results(&self, source: &str, ticket: &str) -> Result<Vec<String>> {
        use sqlx::{Connection, Row};
        let url = format!(
            "sqlite://{}",
            self.dir.join("data/switchboard.db").display()
        );
        let mut conn = sqlx::SqliteConnection::connect(&url).await?;
        let rows = sqlx::query(
            "SELECT result FROM outbox WHERE source_id = ? AND ticket_key = ? \
             AND result IS NOT NULL ORDER BY id",
        )
        .bind(source)
        .bind(ticket)
        .fetch_all(&mut conn)
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Starts the process (again) and waits until it listens.
    pub async fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("switchboard.log"))?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        command.arg("run").current_dir(&self.dir);
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        let child = command
            .env_remove("SWITCHBOARD_CONFIG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "switchboard=debug,info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = self.http.get(format!("{}/health", self.base)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("switchboard did not listen; log: {}", self.log())
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("switchboard.log")).unwrap_or_default()
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// POSTs a JSON webhook to the default source.
    pub async fn hook(&self, body: &Value) -> Result<(u16, Value)> {
        self.hook_raw("tickets", body.to_string().into_bytes(), &[])
            .await
    }

    pub async fn hook_raw(
        &self,
        source: &str,
        body: Vec<u8>,
        headers: &[(&str, String)],
    ) -> Result<(u16, Value)> {
        let mut req = self
            .http
            .post(format!("{}/hooks/{source}", self.base))
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// The status of a GET to `path` (0 when there is no answer).
    pub fn status_of(&self, path: &str) -> impl std::future::Future<Output = u16> + use<> {
        let request = self.http.get(format!("{}{path}", self.base));
        async move {
            request
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    }

    /// Writes a raw HTTP request and returns the answer's head (status line and headers).
    pub async fn raw_status(&self, request: &str) -> Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.base.trim_start_matches("http://");
        let mut conn = tokio::net::TcpStream::connect(addr).await?;
        // The server may answer and close before it has read everything: that is the point.
        let _ = conn.write_all(request.as_bytes()).await;
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(n)) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Ok(Err(e)) if got.is_empty() => return Err(e.into()),
                Ok(Err(_)) => break,
            }
        }
        Ok(String::from_utf8_lossy(&got).to_string())
    }

    /// Writes a raw HTTP request whole, as a sender that reads only once it has written
    /// everything, and returns the whole answer (until the server closes, or 10 s).
    pub async fn raw_answer(&self, request: &[u8]) -> Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.base.trim_start_matches("http://");
        let mut conn = tokio::net::TcpStream::connect(addr).await?;
        conn.write_all(request).await?;
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut got)).await;
        Ok(String::from_utf8_lossy(&got).to_string())
    }

    /// Runs an operator's command (`switchboard <args> --config <this config>`); its exit
    /// code and output.
    pub fn cli(&self, args: &[&str]) -> Result<(i32, String)> {
        let config = self.config.as_ref().context("no config file")?;
        let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(args)
            .arg("--config")
            .arg(config)
            .env_remove("SWITCHBOARD_CONFIG")
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.code().unwrap_or(-1), text))
    }

    /// The ticket's room, via `/link` (404 while there is none).
    pub async fn room_of(&self, key: &str) -> Result<Option<String>> {
        self.room_in("tickets", key).await
    }

    /// The room of a ticket of `source`, if it has one.
    pub async fn room_in(&self, source: &str, key: &str) -> Result<Option<String>> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let r = client
            .get(format!("{}/link/{source}/{}", self.base, enc(key)))
            .send()
            .await?;
        if r.status().as_u16() != 302 {
            return Ok(None);
        }
        let v: Value = r.json().await?;
        Ok(v["room_id"].as_str().map(String::from))
    }

    /// Waits until the ticket has a room.
    pub async fn wait_room(&self, key: &str) -> Result<String> {
        self.wait_room_in("tickets", key).await
    }

    /// Waits until a ticket of `source` has a room.
    pub async fn wait_room_in(&self, source: &str, key: &str) -> Result<String> {
        wait_for(&format!("a room for {key}"), || async {
            self.room_in(source, key).await.ok().flatten()
        })
        .await
        .with_context(|| self.log())
    }
}

impl Drop for Switchboard {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("switchboard log kept in {}", self.dir.display());
        }
    }
}

/// Polls `f` until it returns Some, for at most two minutes.
pub async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A pretix on loopback (`scripts/pretix.sh`), with the organizer `switchboard` and a
/// template event `conf` that each test copies into an event of its own.
pub struct Pretix {
    /// Its data directory, for `scripts/pretix.sh`.
    dir: PathBuf,
    pub base_url: String,
    pub token: String,
    /// Every order action, for webhooks.
    actions: Vec<String>,
    http: reqwest::Client,
}

/// One test's pretix event: its slug and the IDs of its products and Matrix question.
pub struct PretixEvent {
    pub organizer: String,
    pub slug: String,
    pub paid_item: i64,
    pub free_item: i64,
    pub question: i64,
}

/// The pretix shared by all tests: the one `scripts/test.sh` starts (named by
/// `SWITCHBOARD_TEST_PRETIX_DIR`; its first start may still be installing), or one started
/// here and left running for the next run.
pub fn pretix() -> &'static Pretix {
    static P: OnceLock<Pretix> = OnceLock::new();
    // Installing and migrating takes minutes on a fresh machine.
    P.get_or_init(|| {
        shared_peer(
            "SWITCHBOARD_TEST_PRETIX_DIR",
            "pretix",
            false,
            20,
            Pretix::attach,
        )
    })
}

/// A peer server the tests share: the one `scripts/test.sh` starts (its directory named by
/// `env`; its first start may still be installing), or one started here with
/// `scripts/<name>.sh start DIR PORT` (over a wiped directory if `wipe`) and left running
/// for the next run; `attach` uses it once it answers, within `minutes`.
pub fn shared_peer<T>(
    env: &str,
    name: &str,
    wipe: bool,
    minutes: u64,
    attach: fn(&Path) -> Option<T>,
) -> T {
    let script = repo().join(format!("scripts/{name}.sh"));
    let dir = match std::env::var(env) {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => {
            let dir = std::env::temp_dir().join(format!("switchboard-test-{name}"));
            if attach(&dir).is_none() {
                if wipe {
                    let _ = Command::new(&script)
                        .arg("stop")
                        .arg(&dir)
                        .arg("--wipe")
                        .status();
                }
                let ok = Command::new(&script)
                    .arg("start")
                    .arg(&dir)
                    .arg(free_port().to_string())
                    .stdout(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                assert!(ok, "scripts/{name}.sh start failed");
            }
            dir
        }
    };
    let deadline = Instant::now() + Duration::from_secs(minutes * 60);
    loop {
        if let Some(peer) = attach(&dir) {
            return peer;
        }
        if dir.join("failed").exists() || Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("start.log")).unwrap_or_default();
            panic!("{name} did not start: {log}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

impl Pretix {
    /// Uses the instance running on `dir`, once it answers.
    fn attach(dir: &Path) -> Option<Pretix> {
        let state: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).ok()?).ok()?;
        let base_url = state["base_url"].as_str()?.to_string();
        std::net::TcpStream::connect(base_url.strip_prefix("http://")?).ok()?;
        let up = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("{base_url}/api/v1/"))
            .output()
            .ok()?;
        if up.stdout != b"401" {
            return None;
        }
        Some(Pretix {
            dir: dir.to_owned(),
            base_url,
            token: state["token"].as_str()?.to_string(),
            actions: state["webhook_actions"]
                .as_array()?
                .iter()
                .filter_map(|a| a.as_str().map(String::from))
                .collect(),
            // The development server closes connections it kept alive without notice.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .ok()?,
        })
    }

    /// An OAuth application that sends browsers back to `redirect_uri`: its client ID and
    /// secret.
    pub fn oauth_app(&self, redirect_uri: &str) -> Result<(String, String)> {
        let v = self.script(&["oauth-app"], redirect_uri)?;
        let v: Value = serde_json::from_str(&v)?;
        Ok((
            v["client_id"].as_str().context("client_id")?.to_string(),
            v["client_secret"]
                .as_str()
                .context("client_secret")?
                .to_string(),
        ))
    }

    /// Plays the organiser's browser on an authorization link: logs in to pretix, allows,
    /// and returns the address pretix sends the browser back to.
    pub fn oauth_authorize(&self, link: &str) -> Result<String> {
        Ok(self.script(&["oauth-authorize"], link)?.trim().to_string())
    }

    /// `scripts/pretix.sh <command> <dir> <arg>`'s output.
    fn script(&self, command: &[&str], arg: &str) -> Result<String> {
        let out = Command::new(repo().join("scripts/pretix.sh"))
            .args(command)
            .arg(&self.dir)
            .arg(arg)
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            bail!("scripts/pretix.sh {command:?} failed");
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// One call to the REST API (`path` below `/api/v1`).
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}/api/v1{path}", self.base_url)
        };
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header("Authorization", format!("Token {}", self.token));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("pretix {method} {path}: {status} {text}");
        }
        Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        })
    }

    /// A new event, a copy of the template's products and question.
    pub async fn event(&self) -> Result<PretixEvent> {
        let slug = format!("t{}", suffix());
        let events = "/organizers/switchboard/events";
        self.api(
            reqwest::Method::POST,
            &format!("{events}/conf/clone/"),
            Some(
                json!({"name": {"en": slug}, "slug": slug, "live": false, "currency": "EUR",
                        "date_from": "2030-06-01T10:00:00Z", "has_subevents": false}),
            ),
        )
        .await?;
        self.api(
            reqwest::Method::PATCH,
            &format!("{events}/{slug}/"),
            Some(json!({"live": true})),
        )
        .await?;
        let items = self
            .api(
                reqwest::Method::GET,
                &format!("{events}/{slug}/items/"),
                None,
            )
            .await?;
        let item = |price: &str| {
            items["results"]
                .as_array()
                .and_then(|r| r.iter().find(|i| i["default_price"] == price))
                .and_then(|i| i["id"].as_i64())
                .context("an item")
        };
        let questions = self
            .api(
                reqwest::Method::GET,
                &format!("{events}/{slug}/questions/"),
                None,
            )
            .await?;
        let question = questions["results"][0]["id"]
            .as_i64()
            .context("the question")?;
        Ok(PretixEvent {
            organizer: "switchboard".into(),
            paid_item: item("10.00")?,
            free_item: item("0.00")?,
            question,
            slug,
        })
    }
}

impl PretixEvent {
    /// Sends the event's order actions to `url`.
    pub async fn webhook(&self, pretix: &Pretix, url: &str) -> Result<()> {
        pretix
            .api(
                reqwest::Method::POST,
                &format!("/organizers/{}/webhooks/", self.organizer),
                Some(
                    json!({"target_url": url, "enabled": true, "all_events": false,
                            "limit_events": [self.slug], "action_types": pretix.actions}),
                ),
            )
            .await?;
        Ok(())
    }

    fn orders(&self) -> String {
        format!("/organizers/{}/events/{}/orders", self.organizer, self.slug)
    }

    /// Places an order with one position per answer (`""`: the question left empty): pending
    /// for the paid product, paid at once for the free one.
    pub async fn order(&self, pretix: &Pretix, answers: &[&str], free: bool) -> Result<Value> {
        let item = if free { self.free_item } else { self.paid_item };
        let positions: Vec<Value> = answers
            .iter()
            .map(|a| {
                let answers = if a.is_empty() {
                    json!([])
                } else {
                    json!([{"question": self.question, "answer": a, "options": []}])
                };
                json!({"item": item, "attendee_name_parts": {"given_name": "Attendee", "family_name": a},
                       "answers": answers})
            })
            .collect();
        let mut body = json!({"email": "attendee@example.org", "locale": "en",
                              "sales_channel": "web", "send_email": false,
                              "positions": positions});
        if !free {
            body["payment_provider"] = json!("manual");
        }
        pretix
            .api(
                reqwest::Method::POST,
                &format!("{}/", self.orders()),
                Some(body),
            )
            .await
    }

    /// Marks an order paid (`mark_paid`) or canceled (`mark_canceled`).
    pub async fn mark(&self, pretix: &Pretix, code: &str, how: &str) -> Result<()> {
        pretix
            .api(
                reqwest::Method::POST,
                &format!("{}/{code}/{how}/", self.orders()),
                Some(json!({"send_email": false})),
            )
            .await?;
        Ok(())
    }

    /// Changes the Matrix ID an order's position gave.
    pub async fn answer(&self, pretix: &Pretix, position_id: i64, answer: &str) -> Result<()> {
        pretix
            .api(
                reqwest::Method::PATCH,
                &format!(
                    "/organizers/{}/events/{}/orderpositions/{position_id}/",
                    self.organizer, self.slug
                ),
                Some(json!({"answers": [{"question": self.question, "answer": answer, "options": []}]})),
            )
            .await?;
        Ok(())
    }
}

/// A Request Tracker on loopback (`scripts/rt.sh`): REST2 tokens of root, the agents
/// `agent` (Alice Agent) and `agent2` (Bob Agent), and `switchboard`, the user Switchboard
/// reads and writes as; `customer` (Carl Customer) has no token.
pub struct Rt {
    dir: PathBuf,
    pub url: String,
    rest2: String,
    pub root_token: String,
    pub agent_token: String,
    pub agent2_token: String,
    pub switchboard_token: String,
    http: reqwest::Client,
}

/// The RT shared by all tests: the one `scripts/test.sh` starts (named by
/// `SWITCHBOARD_TEST_RT_DIR`; it may still be installing), or one started here.
pub fn rt() -> &'static Rt {
    static R: OnceLock<Rt> = OnceLock::new();
    R.get_or_init(|| shared_peer("SWITCHBOARD_TEST_RT_DIR", "rt", true, 15, Rt::attach))
}

impl Rt {
    /// Uses the instance running in `dir`, once it answers.
    fn attach(dir: &Path) -> Option<Rt> {
        let state: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).ok()?).ok()?;
        let url = state["url"].as_str()?.to_string();
        std::net::TcpStream::connect(url.strip_prefix("http://")?).ok()?;
        let token = |who: &str| state[who]["token"].as_str().map(String::from);
        Some(Rt {
            dir: dir.to_owned(),
            rest2: state["rest2"].as_str()?.to_string(),
            url,
            root_token: token("root")?,
            agent_token: token("agent")?,
            agent2_token: token("agent2")?,
            switchboard_token: token("switchboard")?,
            http: reqwest::Client::new(),
        })
    }

    /// A queue whose tickets' changes the shipped scrip POSTs to `url`, signed with
    /// `secret`.
    pub fn queue(&self, name: &str, url: &str, secret: &str) -> Result<()> {
        let ok = Command::new(repo().join("scripts/rt.sh"))
            .arg("queue")
            .arg(&self.dir)
            .args([name, url, secret])
            .stdout(Stdio::null())
            .status()?
            .success();
        if !ok {
            bail!("scripts/rt.sh queue {name} failed");
        }
        Ok(())
    }

    /// Merges ticket `id` into `into` (REST2 cannot).
    pub fn merge(&self, id: u64, into: u64) -> Result<()> {
        let ok = Command::new(repo().join("scripts/rt.sh"))
            .arg("merge")
            .arg(&self.dir)
            .args([id.to_string(), into.to_string()])
            .stdout(Stdio::null())
            .status()?
            .success();
        if !ok {
            bail!("scripts/rt.sh merge {id} {into} failed");
        }
        Ok(())
    }

    /// One REST2 call with `token`; its JSON answer.
    pub async fn call(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.rest2))
            .header("Authorization", format!("token {token}"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("RT {method} {path}: {status} {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Creates a ticket as root; its number.
    pub async fn create(&self, body: Value) -> Result<u64> {
        let v = self
            .call(
                &self.root_token,
                reqwest::Method::POST,
                "/ticket",
                Some(body),
            )
            .await?;
        v["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .context("ticket id")
    }

    /// A reply (`correspond`) or a comment, as the holder of `token`.
    pub async fn write(&self, token: &str, ticket: u64, what: &str, text: &str) -> Result<()> {
        self.call(
            token,
            reqwest::Method::POST,
            &format!("/ticket/{ticket}/{what}"),
            Some(json!({"Content": text, "ContentType": "text/plain"})),
        )
        .await
        .map(drop)
    }

    /// Changes a ticket's fields (`{"Status": "resolved"}`) as root.
    pub async fn set(&self, ticket: u64, fields: Value) -> Result<()> {
        self.call(
            &self.root_token,
            reqwest::Method::PUT,
            &format!("/ticket/{ticket}"),
            Some(fields),
        )
        .await
        .map(drop)
    }

    /// A ticket's replies and comments: (type, creator, text), oldest first.
    pub async fn messages(&self, ticket: u64) -> Result<Vec<(String, String, String)>> {
        let history = self
            .call(
                &self.root_token,
                reqwest::Method::GET,
                &format!("/ticket/{ticket}/history?fields=Type,Creator&per_page=100"),
                None,
            )
            .await?;
        let mut out = Vec::new();
        for item in history["items"].as_array().context("items")? {
            let kind = item["Type"].as_str().unwrap_or_default();
            if !matches!(kind, "Create" | "Correspond" | "Comment") {
                continue;
            }
            let id = item["id"].as_str().unwrap_or_default();
            let parts = self
                .call(
                    &self.root_token,
                    reqwest::Method::GET,
                    &format!("/transaction/{id}/attachments?fields=ContentType,Content"),
                    None,
                )
                .await?;
            let text = parts["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["ContentType"] == "text/plain")
                .and_then(|p| p["Content"].as_str())
                .unwrap_or_default()
                .to_string();
            let creator = item["Creator"]["id"].as_str().unwrap_or_default();
            out.push((kind.to_string(), creator.to_string(), text));
        }
        Ok(out)
    }
}
