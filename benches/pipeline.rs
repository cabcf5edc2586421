//! Switchboard's benchmark: every figure is a ratio against a baseline measured in the same
//! run on the same machine.
//!
//! - intake: verified, durably stored webhooks per second on SQLite and PostgreSQL, against a
//!   bare warp handler at the same concurrency;
//! - end to end, many tickets: webhook -> message in the ticket's room, spread over ROOMS
//!   rooms at concurrency C, against the homeserver's own direct-send rate into the same
//!   rooms at the same C;
//! - end to end, one ticket: messages of one ticket (delivered in order), against sequential
//!   direct sends into one room.
//!
//! - helpdesk: relay latency of a customer's message into the backoffice thread with
//!   BENCH_OPEN_REQUESTS (10,000) open requests in the database, against the same with 10.
//!
//! Run with `scripts/bench.sh` (starts a throwaway Synapse). Knobs: BENCH_INTAKE_REQUESTS,
//! BENCH_INTAKE_CONCURRENCY, BENCH_MESSAGES, BENCH_ROOMS, BENCH_CONCURRENCY, BENCH_RELAYS,
//! BENCH_OPEN_REQUESTS.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use switchboard::store::Store;

#[allow(dead_code)]
#[path = "../tests/integration/harness.rs"]
mod harness;

use harness::free_port;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sign(body: &[u8]) -> String {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(b"bench-secret").expect("key");
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

/// Runs `job(0..n)` on `c` concurrent workers; returns jobs per second.
async fn concurrently<F, Fut>(n: usize, c: usize, job: F) -> Result<f64>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let job = Arc::new(job);
    let started = Instant::now();
    let workers: Vec<_> = (0..c)
        .map(|_| {
            let (next, job) = (next.clone(), job.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, anyhow::Error>(());
                    }
                    job(i).await?;
                }
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// POSTs `n` signed bodies from `make` at concurrency `c`; returns requests per second.
async fn load(
    url: &str,
    n: usize,
    c: usize,
    make: impl Fn(usize) -> Vec<u8> + Send + Sync + 'static,
) -> Result<f64> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(c)
        .build()?;
    let url = url.to_string();
    concurrently(n, c, move |i| {
        let body = make(i);
        let sig = sign(&body);
        let request = client
            .post(&url)
            .header("content-type", "application/json")
            .header("x-signature-256", sig)
            .body(body);
        async move {
            let r = request.send().await?;
            if !r.status().is_success() {
                bail!("request {i}: {}", r.status());
            }
            r.bytes().await?;
            Ok(())
        }
    })
    .await
}

fn body(ticket: usize, i: usize) -> Vec<u8> {
    json!({
        "ticket": {"id": format!("T-{ticket}"), "title": format!("Ticket {ticket}"), "status": "open"},
        "message": {"body": format!("message {i}")},
    })
    .to_string()
    .into_bytes()
}

/// A bare warp handler: read the body, answer a small JSON. The floor for any webhook server.
async fn bare_warp() -> Result<String> {
    use warp::Filter;
    let route = warp::post()
        .and(warp::path!("hooks" / String))
        .and(warp::body::bytes())
        .map(|_s: String, b: bytes::Bytes| {
            warp::reply::json(&json!({"id": b.len(), "duplicate": false}))
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(warp::serve(route).incoming(listener).run());
    Ok(format!("http://{addr}/hooks/bench"))
}

/// Intake alone, as `switchboard run` wires it (the same routes, source, signature check and
/// store), without the engine and the Matrix side that would share its CPU.
async fn intake_only(db_url: &str) -> Result<String> {
    use switchboard::config::{Secret, SignatureConfig};
    use switchboard_connector::Kind;
    let store = Store::connect(db_url, None).await?;
    let host = Arc::new(switchboard::host::ServiceHost::new(
        store.clone(),
        Arc::new(tokio::sync::Notify::new()),
        None,
        switchboard::metrics::Metrics::new(),
        Default::default(),
    ));
    let info = switchboard_connector::SourceInfo {
        id: "bench".into(),
        authenticated: true,
        bot: "bench".into(),
        ..Default::default()
    };
    let checked: switchboard_connector::Checked =
        Box::<switchboard_webhook::WebhookConfig>::default();
    let connector = switchboard_webhook::Webhook
        .build(&info, &checked, host)
        .map_err(anyhow::Error::msg)?;
    let source = switchboard::http::Source {
        id: "bench".into(),
        connector,
        signature: Some((SignatureConfig::default(), Secret::new("bench-secret"))),
        path_secret: None,
        basic_auth: None,
        link_create: false,
    };
    let state = Arc::new(switchboard::http::HttpState {
        routes: Default::default(),
        store,
        sources: [("bench".to_string(), source)].into_iter().collect(),
        metrics: switchboard::metrics::Metrics::new(),
        engine_wake: Arc::new(tokio::sync::Notify::new()),
        body_limit: 1 << 20,
        link_base: String::new(),
        link_wait: Duration::from_secs(1),
        metrics_guard: None,
        status_page: None,
    });
    let (addr, server) = switchboard::http::serve(state, "127.0.0.1:0".parse()?).await?;
    tokio::spawn(server);
    Ok(format!("http://{addr}/hooks/bench"))
}

struct Instance {
    base: String,
    store: Store,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Switchboard in this process, as `switchboard run` would start it.
async fn switchboard(
    db_url: Option<&str>,
    homeserver: &str,
    user: &str,
    password: &str,
    concurrency: usize,
    extra: &str,
) -> Result<Instance> {
    let dir = std::env::temp_dir().join(format!("switchboard-bench-{:x}", rand::random::<u64>()));
    let port = free_port();
    let db = db_url
        .map(|u| format!("[database]\nurl = \"{u}\"\nmax_connections = 16\n"))
        .unwrap_or_default();
    let text = format!(
        "data_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n{db}\n\
         [matrix]\nhomeserver = \"{homeserver}\"\nuser = \"{user}\"\npassword = \"{password}\"\n\
         encryption = false\nconcurrency = {concurrency}\n\
         [log]\nlevel = \"warn\"\n\
         [sources.bench]\nkind = \"webhook\"\n[sources.bench.signature]\nsecret = \"bench-secret\"\n\
         {extra}",
        dir.display()
    );
    let loaded = switchboard::config::parse(&text).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let running = switchboard::app::start(loaded).await?;
    Ok(Instance {
        base: format!("http://{}", running.addr),
        store: running.store,
        _dir: TempDir(dir),
    })
}

/// Direct client-server calls: the baseline Switchboard is compared with.
struct Homeserver {
    base: String,
    http: reqwest::Client,
}

impl Homeserver {
    async fn create_room(&self, token: &str) -> Result<String> {
        let r: Value = self
            .http
            .post(format!("{}/_matrix/client/v3/createRoom", self.base))
            .bearer_auth(token)
            .json(&json!({"preset": "private_chat", "name": "bench"}))
            .send()
            .await?
            .json()
            .await?;
        Ok(r["room_id"].as_str().context("room_id")?.to_string())
    }

    /// Sends `n` messages spread over `rooms` at concurrency `c`; messages per second.
    async fn direct_send(&self, token: &str, rooms: &[String], n: usize, c: usize) -> Result<f64> {
        let run = format!("{:x}", rand::random::<u32>());
        let rooms: Vec<String> = rooms
            .iter()
            .map(|r| {
                percent_encoding::utf8_percent_encode(r, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
            })
            .collect();
        let (http, base, token) = (self.http.clone(), self.base.clone(), token.to_string());
        concurrently(n, c, move |i| {
            let request = http
                .put(format!(
                    "{base}/_matrix/client/v3/rooms/{}/send/m.room.message/d{run}.{i}",
                    rooms[i % rooms.len()]
                ))
                .bearer_auth(&token)
                .json(&json!({"msgtype": "m.text", "body": format!("direct {i}")}));
            async move {
                let r = request.send().await?;
                if !r.status().is_success() {
                    bail!("send {i}: {}", r.status());
                }
                r.bytes().await?;
                Ok(())
            }
        })
        .await
    }
}

/// Waits until every accepted webhook is processed and its actions are done (at least
/// `done` in all); fails on any failed action.
async fn wait_done(store: &Store, done: i64, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    // Looks only at what is still to do (small, indexed), and not too often, so looking
    // does not slow down what is measured (up to 50 ms more per run, under 1 % of the
    // shortest); inbox first: once it is empty, every action is in the outbox.
    while !(store.unprocessed(1).await?.is_empty() && store.pending_actions().await? == 0) {
        if Instant::now() > deadline {
            bail!("timed out with actions pending");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = store.outbox_counts().await?;
    if c.failed > 0 {
        bail!(
            "{} actions failed: {:?}",
            c.failed,
            store.failures(3).await?
        );
    }
    if c.done < done {
        bail!("only {} of {done} actions done", c.done);
    }
    Ok(())
}

/// CPU seconds the benchmark's Synapse has used so far, if it can be read (Linux).
fn homeserver_cpu() -> Option<f64> {
    let dir = std::env::var("SWITCHBOARD_TEST_SYNAPSE_DIR").ok()?;
    let pid = std::fs::read_to_string(format!("{dir}/synapse.pid")).ok()?;
    process_cpu(pid.trim())
}

/// CPU seconds (user + system) a process has used so far, if it can be read (Linux).
fn process_cpu(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which ends with ')'): utime and stime are 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Runs `n` requests sent by `job`: requests per second, and this process's CPU
/// microseconds per request over the same span.
async fn cpu_per_request(
    n: usize,
    job: impl std::future::Future<Output = Result<f64>>,
) -> Result<(f64, f64)> {
    let cpu = process_cpu("self");
    let rate = job.await?;
    let us = cpu
        .zip(process_cpu("self"))
        .map_or(f64::NAN, |(a, b)| (b - a) * 1e6 / n as f64);
    Ok((rate, us))
}

/// A timed run: messages per second, and the homeserver's CPU milliseconds per message.
struct Run {
    rate: f64,
    cpu_ms: Option<f64>,
}

/// Times `n` messages sent by `job`, with the homeserver's CPU time over the same span.
async fn timed(n: usize, job: impl std::future::Future<Output = Result<f64>>) -> Result<Run> {
    let cpu = homeserver_cpu();
    let rate = job.await?;
    let cpu_ms = cpu
        .zip(homeserver_cpu())
        .map(|(a, b)| (b - a) * 1000.0 / n as f64);
    Ok(Run { rate, cpu_ms })
}

/// Webhooks -> messages over `tickets` tickets (rooms made beforehand, untimed).
async fn end_to_end(sb: &Instance, tickets: usize, n: usize, c: usize) -> Result<Run> {
    let url = format!("{}/hooks/bench", sb.base);
    // Bodies must differ from earlier runs', or they are (rightly) taken as redeliveries.
    let run = rand::random::<u32>() as usize * 1_000_000;
    let before = sb.store.outbox_counts().await?.done;
    // Open every ticket's room first: one webhook each (open_room, unless the room exists
    // already, and the post).
    load(&url, tickets, c, move |i| body(i, run + n + i)).await?;
    wait_done(&sb.store, before + tickets as i64, Duration::from_secs(300)).await?;
    let before = sb.store.outbox_counts().await?.done;
    timed(n, async {
        let started = Instant::now();
        // Every webhook now queues its post (the room exists, so no open_room).
        load(&url, n, c, move |i| body(i % tickets, run + i)).await?;
        wait_done(&sb.store, before + n as i64, Duration::from_secs(600)).await?;
        Ok(n as f64 / started.elapsed().as_secs_f64())
    })
    .await
}

/// Intake alone and with the engine, on both databases, against a bare warp handler.
async fn intake(intake_n: usize, intake_c: usize, c: usize) -> Result<()> {
    // Intake is measured with a homeserver that does not answer, so the numbers are intake
    // alone: the engine still runs, the Matrix side keeps retrying its login.
    let dead_hs = format!("http://127.0.0.1:{}", free_port());

    println!("\n## Intake: {intake_n} signed webhooks, concurrency {intake_c}");
    println!("(each baseline is the mean of bare warp runs right before and right after;");
    println!(" CPU is this process's, load generator included, per request)");
    let warp_url = bare_warp().await?;
    let bare = || {
        cpu_per_request(
            intake_n,
            load(&warp_url, intake_n, intake_c, |i| body(i % 50, i)),
        )
    };
    load(&warp_url, 2000, intake_c, |i| body(i % 50, i)).await?; // warm-up
    // The machine's speed drifts within a run: every figure gets the bare warp runs next to
    // it as its baseline (the run after one figure is the run before the next).
    let mut before = bare().await?;
    let mut report = |label: String, (rate, cpu): (f64, f64), after: (f64, f64)| {
        let (base, base_cpu) = ((before.0 + after.0) / 2.0, (before.1 + after.1) / 2.0);
        println!(
            "{label:<30}{rate:>6.0} req/s   {:.2} x bare warp ({base:.0} req/s)   \
             CPU {cpu:.0} us vs {base_cpu:.0} us",
            rate / base
        );
        before = after;
    };
    let sqlite_dir = TempDir(
        std::env::temp_dir().join(format!("switchboard-bench-{:x}", rand::random::<u64>())),
    );
    for (name, url) in [
        ("SQLite", Store::sqlite_url(&sqlite_dir.0)),
        ("PostgreSQL", harness::postgres_db().await?),
    ] {
        let hook = intake_only(&url).await?;
        load(&hook, 2000, intake_c, |i| body(i % 50, 1_000_000 + i)).await?; // warm-up
        let run = cpu_per_request(
            intake_n,
            load(&hook, intake_n, intake_c, |i| body(i % 50, i)),
        );
        report(format!("intake on {name}"), run.await?, bare().await?);
    }
    // The same with everything else running in the process: the engine turning each
    // delivery into actions as it arrives (the homeserver is unreachable, so nothing is sent).
    for (name, url) in [
        ("SQLite", None),
        ("PostgreSQL", Some(harness::postgres_db().await?)),
    ] {
        let sb = switchboard(url.as_deref(), &dead_hs, "@bench:localhost", "x", c, "").await?;
        let hook = format!("{}/hooks/bench", sb.base);
        load(&hook, 2000, intake_c, |i| body(i % 50, 1_000_000 + i)).await?; // warm-up
        let run = cpu_per_request(
            intake_n,
            load(&hook, intake_n, intake_c, |i| body(i % 50, i)),
        );
        report(format!("  + engine, {name}"), run.await?, bare().await?);
    }
    Ok(())
}

/// A helpdesk for the latency section: its Switchboard, backoffice room and customer chat.
struct Desk {
    sb: Instance,
    operator: harness::User,
    customer: harness::User,
    backoffice: String,
    dm: String,
    label: &'static str,
}

impl Desk {
    async fn new(db_url: Option<&str>, open: usize, label: &'static str) -> Result<Desk> {
        let synapse = harness::synapse();
        let bot = synapse.user("deskbot").await?;
        let operator = synapse.user("operator").await?;
        let customer = synapse.user("customer").await?;
        let backoffice = operator
            .create_room(json!({"preset": "private_chat", "invite": [bot.user_id]}))
            .await?;
        let extra = format!(
            "[sources.help]\nkind = \"matrix_dm\"\n[sources.help.matrix_dm]\n\
             backoffice_room = \"{backoffice}\"\n"
        );
        let sb = switchboard(
            db_url,
            &synapse.base_url,
            &bot.user_id,
            &bot.password,
            16,
            &extra,
        )
        .await?;
        // Other customers' open requests (never written to again), untimed.
        let host = Arc::new(switchboard::host::ServiceHost::new(
            sb.store.clone(),
            Arc::new(tokio::sync::Notify::new()),
            None,
            switchboard::metrics::Metrics::new(),
            Default::default(),
        ));
        let requests = switchboard_matrix_dm::requests::Requests::new(host);
        for i in 1..open {
            let user = format!("@seed{i}:bench.example");
            requests
                .open_request(
                    "help",
                    &user,
                    "bench.example",
                    &format!("!seed{i}:bench"),
                    |_| format!("seed {i}"),
                )
                .await?;
        }
        let dm = customer
            .create_room(json!({"preset": "trusted_private_chat", "is_direct": true,
                                "invite": [bot.user_id]}))
            .await?;
        let desk = Desk {
            sb,
            operator,
            customer,
            backoffice,
            dm,
            label,
        };
        for i in 0..3 {
            desk.relay(&format!("warm-up {i}")).await?;
        }
        Ok(desk)
    }

    /// The customer writes `body`; returns once its copy is in the thread.
    async fn relay(&self, body: &str) -> Result<()> {
        let done = self.sb.store.outbox_counts().await?.done;
        self.customer
            .send(&self.dm, json!({"msgtype": "m.text", "body": body}))
            .await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        // The first message also posts the greeting and the thread root.
        while self.sb.store.outbox_counts().await?.done <= done
            || self.sb.store.pending_actions().await? > 0
        {
            if Instant::now() > deadline {
                bail!("{body} was not relayed");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Milliseconds from each original's sending to its copy's, by the homeserver's clock
    /// (both `origin_server_ts`), for the messages whose bodies start with `prefix`.
    async fn latencies(&self, prefix: &str) -> Result<Vec<f64>> {
        let ts = |events: Vec<Value>, strip: bool| -> std::collections::HashMap<String, i64> {
            events
                .into_iter()
                .filter_map(|e| {
                    let body = e["content"]["body"].as_str()?;
                    let body = if strip {
                        body.split_once(": ")?.1
                    } else {
                        body
                    };
                    body.starts_with(prefix).then(|| {
                        (
                            body.to_string(),
                            e["origin_server_ts"].as_i64().unwrap_or(0),
                        )
                    })
                })
                .collect()
        };
        let sent = ts(self.customer.timeline(&self.dm).await?, false);
        let copied = ts(self.operator.timeline(&self.backoffice).await?, true);
        let mut out: Vec<f64> = sent
            .iter()
            .filter_map(|(body, at)| copied.get(body).map(|c| (c - at) as f64))
            .collect();
        if out.len() != sent.len() {
            bail!(
                "{}: {} of {} messages copied",
                self.label,
                out.len(),
                sent.len()
            );
        }
        out.sort_by(f64::total_cmp);
        Ok(out)
    }
}

fn median(sorted: &[f64]) -> f64 {
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Helpdesk relay latency with many open requests against the same with few, on both
/// databases: two helpdesks side by side, measured in alternating rounds.
async fn helpdesk_latency(relays: usize, open: usize) -> Result<()> {
    println!(
        "\n## Helpdesk: relay latency, customer -> thread, {relays} messages each, one at a time"
    );
    println!("(from the original's sending to the copy's, both by the homeserver's clock)");
    for (name, few_url, many_url) in [
        ("SQLite", None, None),
        (
            "PostgreSQL",
            Some(harness::postgres_db().await?),
            Some(harness::postgres_db().await?),
        ),
    ] {
        let few = Desk::new(few_url.as_deref(), 10, "few").await?;
        let many = Desk::new(many_url.as_deref(), open, "many").await?;
        let rounds = 5;
        for round in 0..rounds {
            for desk in [&few, &many] {
                for i in 0..relays.div_ceil(rounds) {
                    desk.relay(&format!("lat {round}.{i}")).await?;
                    // The sync pauses 500 ms after each response, and the copy just sent
                    // brings one more: waiting past both, each message meets a waiting
                    // sync, and the figure is Switchboard's work, not where the sync was
                    // in its cycle (which adds up to 500 ms).
                    tokio::time::sleep(Duration::from_millis(1300)).await;
                }
            }
        }
        let (f, m) = (few.latencies("lat ").await?, many.latencies("lat ").await?);
        println!(
            "{name:<10} 10 open: median {:.0} ms, mean {:.0} ms; {open} open: median {:.0} ms, mean {:.0} ms   {:.2} x (median), {:.2} x (mean)",
            median(&f),
            mean(&f),
            median(&m),
            mean(&m),
            median(&m) / median(&f),
            mean(&m) / mean(&f),
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let intake_n = env_or("BENCH_INTAKE_REQUESTS", 20_000);
    let intake_c = env_or("BENCH_INTAKE_CONCURRENCY", 64);
    let msgs = env_or("BENCH_MESSAGES", 1000);
    let rooms = env_or("BENCH_ROOMS", 50);
    let c = env_or("BENCH_CONCURRENCY", 16);
    let single = env_or("BENCH_SINGLE_MESSAGES", 200);
    let relays = env_or("BENCH_RELAYS", 60);
    let open = env_or("BENCH_OPEN_REQUESTS", 10_000);

    println!(
        "# Switchboard benchmark ({} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let synapse = harness::synapse();
    let hs = Homeserver {
        base: synapse.base_url.clone(),
        http: reqwest::Client::new(),
    };
    if intake_n > 0 {
        intake(intake_n, intake_c, c).await?;
    }

    if msgs > 0 {
        println!("\n## End to end: {msgs} messages over {rooms} rooms, concurrency {c}");
        println!("(each baseline is the mean of direct sends right before and right after)");
        let token = synapse.user("direct").await?.token;
        let mut direct_rooms = Vec::new();
        for _ in 0..rooms {
            direct_rooms.push(hs.create_room(&token).await?);
        }
        hs.direct_send(&token, &direct_rooms, 100, c).await?; // warm-up
        let spread = || hs.direct_send(&token, &direct_rooms, msgs, c);
        let sequential = || hs.direct_send(&token, &direct_rooms[..1], single, 1);
        for (name, url) in [
            ("SQLite", None),
            ("PostgreSQL", Some(harness::postgres_db().await?)),
        ] {
            let bot = synapse.user("bot").await?;
            let sb =
                switchboard(url.as_deref(), &hs.base, &bot.user_id, &bot.password, c, "").await?;
            let before = timed(msgs, spread()).await?;
            let sb_run = end_to_end(&sb, rooms, msgs, c).await?;
            let after = timed(msgs, spread()).await?;
            let direct = (before.rate + after.rate) / 2.0;
            println!(
                "switchboard on {name:<10} {:>8.1} msg/s   {:.2} x direct send ({direct:.1} msg/s)",
                sb_run.rate,
                sb_run.rate / direct
            );
            if let (Some(sb_cpu), Some(b), Some(a)) = (sb_run.cpu_ms, before.cpu_ms, after.cpu_ms) {
                println!(
                    "  homeserver CPU per message: {sb_cpu:.1} ms via switchboard, {:.1} ms direct",
                    (b + a) / 2.0
                );
            }
            let before = sequential().await?;
            let one = end_to_end(&sb, 1, single, c).await?.rate;
            let direct_one = (before + sequential().await?) / 2.0;
            println!(
                "  one ticket, {single} msgs:    {one:>8.1} msg/s   {:.2} x sequential direct send ({direct_one:.1} msg/s)",
                one / direct_one
            );
        }
    }
    if relays > 0 {
        helpdesk_latency(relays, open).await?;
    }
    Ok(())
}
