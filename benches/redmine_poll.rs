//! What one poll of the Redmine source costs Redmine, with few and with many open issues,
//! against the pattern of polling every mapped issue (two GETs each: its journals, then
//! its status), measured in the same run against the same Redmine.
//!
//! Needs a Redmine (`scripts/bench.sh redmine` starts one): its `state.json` in the
//! directory `SWITCHBOARD_TEST_REDMINE_DIR` names. Knobs: `BENCH_REDMINE_ISSUES` (the
//! sizes, default `10,1000`), `BENCH_REDMINE_CHANGED` (issues changed between two polls,
//! default 10).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_connector::testing::{TestHost, TestMatrix};
use switchboard_connector::{
    ActionContext, ActionRow, Checker, Connector, Dialect, Feed, Host, Kind, Side, SourceInfo,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

struct Redmine {
    url: String,
    admin: String,
    agent: String,
    tracker: u64,
    http: reqwest::Client,
}

impl Redmine {
    async fn call(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("X-Redmine-API-Key", key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        if !response.status().is_success() {
            return Err(format!("{path}: {}", response.status()).into());
        }
        let text = response.text().await?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

fn counter(host: &TestHost, name: &str, purposes: &[&str]) -> f64 {
    host.registry()
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().to_vec())
        .filter(|m| {
            purposes.is_empty()
                || m.get_label()
                    .iter()
                    .any(|l| l.name() == "purpose" && purposes.contains(&l.value()))
        })
        .map(|m| {
            if name.ends_with("_total") {
                m.get_counter().get_value()
            } else {
                m.get_histogram().get_sample_sum()
            }
        })
        .sum()
}

fn polls(host: &TestHost) -> u64 {
    host.registry()
        .gather()
        .iter()
        .filter(|f| f.name() == "redmine_poll_seconds")
        .flat_map(|f| f.get_metric().to_vec())
        .map(|m| m.get_histogram().get_sample_count())
        .sum()
}

/// Waits for the end of the poll under way (or of the next one).
async fn poll_ended(host: &TestHost) {
    let p0 = polls(host);
    while polls(host) < p0 + 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `n` more polls are done; the requests each made and its time, on average.
async fn next_polls(host: &TestHost, n: u64) -> (f64, f64) {
    let (p1, r1, t1) = (
        polls(host),
        counter(host, "redmine_requests_total", &["poll", "journals"]),
        counter(host, "redmine_poll_seconds", &[]),
    );
    while polls(host) < p1 + n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let done = polls(host) - p1;
    let requests = counter(host, "redmine_requests_total", &["poll", "journals"]) - r1;
    let seconds = counter(host, "redmine_poll_seconds", &[]) - t1;
    (requests / done as f64, seconds / done as f64)
}

/// Polling every mapped issue: two GETs each. The requests and the time of one poll.
async fn every_issue(rm: &Redmine, issues: &[i64]) -> Result<(f64, f64)> {
    let began = Instant::now();
    for id in issues {
        rm.call(
            &rm.admin,
            reqwest::Method::GET,
            &format!("/issues/{id}.json?include=journals"),
            None,
        )
        .await?;
        rm.call(
            &rm.admin,
            reqwest::Method::GET,
            &format!("/issues/{id}.json"),
            None,
        )
        .await?;
    }
    Ok((2.0 * issues.len() as f64, began.elapsed().as_secs_f64()))
}

async fn scenario(rm: &Redmine, open: usize, changed: usize) -> Result<()> {
    let project = format!("bench{open}x{}", std::process::id());
    rm.call(
        &rm.admin,
        reqwest::Method::POST,
        "/projects.json",
        Some(json!({"project": {"name": project, "identifier": project,
            "tracker_ids": [rm.tracker], "enabled_module_names": ["issue_tracking"]}})),
    )
    .await?;
    let kind = switchboard_redmine::Redmine;
    let host = Arc::new(TestHost::new(kind.migrations(Dialect::Sqlite)).await?);
    let info = SourceInfo {
        id: "issues".into(),
        bot: TestMatrix::BOT.into(),
        ..Default::default()
    };
    let section = json!({"url": rm.url, "api_key": rm.admin, "project": project,
                         "helpdesk": "help", "poll_seconds": 2});
    let mut problems = Vec::new();
    let mut report = |k: &str, m: String| problems.push(format!("{k}: {m}"));
    let checked = kind
        .check(
            &info,
            Some(&section),
            &mut Checker::new("issues", "redmine", &mut report),
        )
        .ok_or_else(|| format!("{problems:?}"))?;
    let as_host: Arc<dyn Host> = host.clone();
    let source: Arc<dyn Connector> = kind.build(&info, &checked, as_host)?;

    // The open requests, each with its issue, made through the source itself.
    let matrix = TestMatrix::default();
    let began = Instant::now();
    for n in 0..open {
        let feed = Feed::Message {
            from: Side::Customer,
            author: format!("@customer{n}:example.org"),
            name: None,
            text: "Help".into(),
            file: None,
        };
        let mut event = feed.event(&n.to_string());
        event.title = Some(format!("Request {n}"));
        let queued = source.plan(&event).await?.unwrap_or_default();
        for (i, q) in queued.iter().enumerate() {
            let row = ActionRow {
                id: (n * 10 + i) as i64,
                source_id: "issues".into(),
                lane: q.lane.clone(),
                txn_key: format!("{n}.{i}"),
                attempts: 1,
            };
            let cx = ActionContext {
                row: &row,
                host: &*host,
                matrix: &matrix,
            };
            source
                .execute(&cx, &q.action)
                .await
                .map_err(|f| f.into_message())?;
        }
    }
    eprintln!(
        "{open} requests with their issues made in {:.0} s",
        began.elapsed().as_secs_f64()
    );
    let ids: Vec<i64> = {
        let mut ids = Vec::new();
        let mut offset = 0;
        loop {
            let page = rm
                .call(
                    &rm.admin,
                    reqwest::Method::GET,
                    &format!("/issues.json?project_id={project}&limit=100&offset={offset}"),
                    None,
                )
                .await?;
            let got: Vec<i64> = page["issues"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["id"].as_i64())
                .collect();
            offset += got.len();
            ids.extend(got);
            if offset as u64 >= page["total_count"].as_u64().unwrap_or(0) {
                break ids;
            }
        }
    };

    let runner = tokio::spawn(source.clone().run());
    // The first poll only starts the cursor; the second reads what the setup changed.
    while polls(&host) < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A poll reads again what changed in the 10 s before it (changes are written a moment
    // after their time): the setup's changes are behind after 12 s.
    tokio::time::sleep(Duration::from_secs(12)).await;
    poll_ended(&host).await;
    let (quiet, quiet_s) = next_polls(&host, 3).await;
    // Changed while the source waits for its next poll (2 s), which reads them all.
    poll_ended(&host).await;
    for id in ids.iter().take(changed) {
        rm.call(
            &rm.agent,
            reqwest::Method::PUT,
            &format!("/issues/{id}.json"),
            Some(json!({"issue": {"notes": "a note from Redmine"}})),
        )
        .await?;
    }
    let (busy, busy_s) = next_polls(&host, 1).await;
    runner.abort();
    let (theirs, theirs_s) = every_issue(rm, &ids).await?;
    println!(
        "{open:>5} open, nothing changed: {quiet:>6.1} requests per poll ({:>5.0} ms); every issue: {theirs:>5.0} requests ({:>6.0} ms)   {:>6.1} x fewer requests, {:.1} x less time",
        quiet_s * 1000.0,
        theirs_s * 1000.0,
        theirs / quiet.max(1.0),
        theirs_s / quiet_s.max(1e-6),
    );
    println!(
        "{open:>5} open, {changed} changed:      {busy:>6.1} requests per poll ({:>5.0} ms); every issue: {theirs:>5.0} requests ({:>6.0} ms)   {:>6.1} x fewer requests, {:.1} x less time",
        busy_s * 1000.0,
        theirs_s * 1000.0,
        theirs / busy.max(1.0),
        theirs_s / busy_s.max(1e-6),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let dir = std::env::var("SWITCHBOARD_TEST_REDMINE_DIR").map_err(
        |_| "SWITCHBOARD_TEST_REDMINE_DIR names no Redmine: run scripts/bench.sh redmine",
    )?;
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/state.json"))?)?;
    let rm = Redmine {
        url: state["url"].as_str().unwrap_or_default().to_string(),
        admin: state["admin"]["key"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        agent: state["agent"]["key"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        tracker: state["tracker_id"].as_u64().unwrap_or(3),
        http: reqwest::Client::new(),
    };
    let sizes: Vec<usize> = std::env::var("BENCH_REDMINE_ISSUES")
        .unwrap_or_else(|_| "10,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let changed: usize = std::env::var("BENCH_REDMINE_CHANGED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    println!("## Redmine: requests per poll, this source against polling every mapped issue");
    println!("(one poll every 2 s; `every issue` is two GETs per open issue, as Honoroit polls)");
    for open in sizes {
        scenario(&rm, open, changed.min(open)).await?;
    }
    Ok(())
}
