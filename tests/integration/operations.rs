//! Running Switchboard as an operator does: `check-config`, the ways the bot logs in, the
//! data secret that seals the stored session, who may read `/metrics`, and the status page.

use anyhow::{Context, Result};
use base64::Engine as _;
use serde_json::json;

use crate::browser::chromium;
use crate::common::{start, ticket, wait_messages};
use crate::harness::{self, Db, Setup, Switchboard, synapse, wait_for};

#[tokio::test]
async fn check_config_names_key_and_line() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("switchboard-cfg-{}", harness::suffix()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[matrix]\nhomeserver = \"http://127.0.0.1:1\"\nuser = \"@bot:localhost\"\nencryption = \"yes\"\n\n[sources.t]\nkind = \"webhok\"\n",
    )?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 7: `sources.t.kind`"), "{stderr}");
    assert!(stderr.contains("line 4: `matrix.encryption`"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Switchboard on SQLite with the given `[matrix]` login line.
async fn start_with_login(bot: &harness::User, login: String) -> Result<Switchboard> {
    Switchboard::start(Setup {
        synapse: synapse(),
        bot,
        db: Db::Sqlite,
        extra: String::new(),
        encryption: false,
        login: Some(login),
    })
    .await
}

/// Logs in the other two ways (shared secret, access token), and keeps its device across a
/// restart: the stored session is reused, not replaced by a new login.
#[tokio::test]
async fn logins_by_shared_secret_and_access_token() -> Result<()> {
    let s = synapse();
    for how in ["shared_secret", "access_token"] {
        let bot = s.user("bot").await?;
        let login = match how {
            "shared_secret" => format!("shared_secret = \"{}\"", harness::SHARED_SECRET),
            _ => format!("access_token = \"{}\"", bot.token),
        };
        let mut sb = start_with_login(&bot, login).await?;
        sb.hook(&ticket("S-1", "new", Some(how), &[], &bot.user_id))
            .await?;
        let room = sb.wait_room("S-1").await?;
        assert_eq!(wait_messages(&bot, &room, 1).await?, vec![how]);
        let devices = bot.devices().await?;
        sb.kill();
        sb.spawn().await?;
        sb.hook(&ticket(
            "S-1",
            "open",
            Some("after restart"),
            &[],
            &bot.user_id,
        ))
        .await?;
        wait_messages(&bot, &room, 2).await?;
        assert_eq!(
            bot.devices().await?,
            devices,
            "{how}: no new device after a restart"
        );
    }
    Ok(())
}

/// With a data secret the stored session is sealed: the access token is not in the
/// database, a restart reuses the session, and a new secret (or one set later) means a new
/// login instead of a failure.
#[tokio::test]
async fn data_secret_seals_the_stored_session() -> Result<()> {
    let s = synapse();
    let bot = s.user("bot").await?;
    let mut sb = start_with_login(&bot, format!("access_token = \"{}\"", bot.token)).await?;
    let mut sent = Vec::new();
    let mut say = async |sb: &Switchboard, text: &str| -> Result<Vec<String>> {
        sent.push(text.to_string());
        sb.hook(&ticket("D-1", "open", Some(text), &[], &bot.user_id))
            .await?;
        let room = sb.wait_room("D-1").await?;
        let got = wait_messages(&bot, &room, sent.len()).await?;
        assert_eq!(got, sent);
        Ok(got)
    };
    say(&sb, "before a secret").await?;
    let plain = sb.sqlite_setting("matrix.session").await?.expect("session");
    assert!(plain.contains(&bot.token), "stored as is without a secret");

    // A secret set later: the crypto store made without it is replaced, the session sealed.
    sb.kill();
    sb.set_top_level("data_secret", "\"first secret\"")?;
    sb.spawn().await?;
    say(&sb, "with a secret").await?;
    let sealed = wait_for("a sealed session", || async {
        let v = sb.sqlite_setting("matrix.session").await.ok()??;
        v.starts_with("sealed:v1:").then_some(v)
    })
    .await?;
    assert!(!sealed.contains(&bot.token), "{sealed}");

    // A restart with the same secret reuses the session: nothing is written again (each
    // sealing has a fresh nonce, so a new login would change the value).
    sb.kill();
    sb.spawn().await?;
    say(&sb, "after a restart").await?;
    assert_eq!(
        sb.sqlite_setting("matrix.session").await?,
        Some(sealed.clone())
    );

    // Another secret: the stored session does not open, so Switchboard logs in again.
    sb.kill();
    sb.set_top_level("data_secret", "\"second secret\"")?;
    sb.spawn().await?;
    say(&sb, "with another secret").await?;
    let resealed = sb.sqlite_setting("matrix.session").await?.expect("session");
    assert!(resealed.starts_with("sealed:v1:") && resealed != sealed);
    Ok(())
}

#[tokio::test]
async fn metrics_need_auth_and_an_allowed_address() -> Result<()> {
    let s = synapse();
    let bot = s.user("bot").await?;
    let extra = "\n[metrics]\nusername = \"prom\"\npassword = \"scrape-me\"\nallow_ips = [\"127.0.0.0/8\"]\n";
    let sb = start(Db::Sqlite, &bot, extra).await?;
    let url = format!("{}/metrics", sb.base);
    let r = sb.http().get(&url).send().await?;
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = sb
        .http()
        .get(&url)
        .basic_auth("prom", Some("wrong"))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 401);
    let r = sb
        .http()
        .get(&url)
        .basic_auth("prom", Some("scrape-me"))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().await?;
    assert!(text.contains("switchboard_homeserver_up"), "{text}");
    assert!(!text.contains(&bot.user_id), "no user IDs in metrics");
    // The status page is off unless enabled.
    assert_eq!(sb.status_of("/status").await, 404);
    drop(sb);

    // A status page guarded by its address list alone answers at an address, not at a
    // name (another site's name pointed at it); `/status/` leads to `status`.
    let extra = "\n[status_page]\nenabled = true\nallow_ips = [\"127.0.0.0/8\"]\n";
    let sb = start(Db::Sqlite, &bot, extra).await?;
    assert_eq!(sb.status_of("/status").await, 200);
    let by_name = sb
        .http()
        .get(format!("{}/status", sb.base))
        .header("host", "rebound.example:8080")
        .send()
        .await?;
    assert_eq!(by_name.status().as_u16(), 403);
    let slash = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?
        .get(format!("{}/status/", sb.base))
        .send()
        .await?;
    assert_eq!(slash.status().as_u16(), 308);
    assert_eq!(slash.headers()["location"], "../status");
    drop(sb);

    // An allowlist that leaves loopback out.
    let extra = "\n[metrics]\nallow_ips = [\"10.0.0.0/8\"]\n";
    let sb = start(Db::Sqlite, &bot, extra).await?;
    let r = sb.http().get(format!("{}/metrics", sb.base)).send().await?;
    assert_eq!(r.status().as_u16(), 403);
    Ok(())
}

/// A healthy start, a ticket's room and its first messages log nothing at `WARN` or
/// `ERROR`: the Matrix client's expected 404s (account data never set, state a room does
/// not have) are not an operator's business. An action's outcome names its source and
/// ticket.
#[tokio::test]
async fn a_healthy_run_logs_no_warnings() -> Result<()> {
    let hs = synapse();
    let bot = hs.user("bot").await?;
    let alice = hs.user("alice").await?;
    let sb = start(Db::Sqlite, &bot, "").await?;
    let (status, _) = sb
        .hook(&ticket(
            "QUIET-1",
            "open",
            Some("Hello"),
            &[&alice.user_id],
            "",
        ))
        .await?;
    assert_eq!(status, 200);
    let room = sb.wait_room("QUIET-1").await?;
    wait_messages(&bot, &room, 1).await?;
    // `status`: the database and the homeserver answer, nothing waits.
    let (code, status) = sb.cli(&["status"])?;
    assert_eq!(code, 0, "{status}");
    assert!(status.contains("database: answers"), "{status}");
    assert!(
        status.contains(&format!("homeserver: {}", hs.base_url)),
        "{status}"
    );
    let line = status.lines().find(|l| l.starts_with("tickets\t"));
    assert_eq!(line, Some("tickets\twebhook\t0\t0\t0\t0\t-"), "{status}");
    let log = sb.log();
    let loud: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    assert!(loud.is_empty(), "{loud:#?}");
    let outcome = log
        .lines()
        .find(|l| l.contains("action done") && l.contains("open_room"))
        .unwrap_or_default();
    assert!(
        outcome.contains("source") && outcome.contains("tickets") && outcome.contains("QUIET-1"),
        "{outcome}"
    );
    Ok(())
}

/// The status page, in a real browser: it is behind its login, lists a failed invite with
/// the homeserver's reason; once the cause is mended (the user unbanned), its Retry button
/// puts it back in line and the invite is done. A retry from another site, or without the
/// page's token, is refused.
#[tokio::test]
async fn the_status_page_retries_in_a_browser() -> Result<()> {
    let hs = synapse();
    let (bot, alice, bob) = (
        hs.user("bot").await?,
        hs.user("alice").await?,
        hs.user("bob").await?,
    );
    let extra = "\n[status_page]\nenabled = true\nusername = \"ops\"\npassword = \"mend-it\"\n\
                 allow_ips = [\"127.0.0.0/8\"]\n";
    let sb = start(Db::Sqlite, &bot, extra).await?;
    let page = format!("{}/status", sb.base);
    let r = sb.http().get(&page).send().await?;
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let get = || sb.http().get(&page).basic_auth("ops", Some("mend-it"));
    let html = get().send().await?.text().await?;
    assert!(html.contains("Nothing failed or was set aside."), "{html}");

    // Bob is banned from the ticket's room, so inviting him fails for good.
    let people = [alice.user_id.as_str()];
    let (code, _) = sb
        .hook(&ticket(
            "ST-1",
            "new",
            Some("Hello"),
            &people,
            &alice.user_id,
        ))
        .await?;
    assert_eq!(code, 200);
    let room = sb.wait_room("ST-1").await?;
    bot.moderate(&room, "ban", &bob.user_id).await?;
    let people = [alice.user_id.as_str(), bob.user_id.as_str()];
    let (code, _) = sb
        .hook(&ticket(
            "ST-1",
            "open",
            Some("Bob too"),
            &people,
            &alice.user_id,
        ))
        .await?;
    assert_eq!(code, 200);
    let html = wait_for("the failed invite on the page", || async {
        let html = get().send().await.ok()?.text().await.ok()?;
        html.contains("they are banned from the room")
            .then_some(html)
    })
    .await
    .with_context(|| sb.log())?;
    assert!(
        html.contains("<td>ST-1</td>") && html.contains("<td>invite</td>"),
        "{html}"
    );
    // Metrics count it by source, kind and state (refreshed every 15 s).
    let metrics = format!("{}/metrics", sb.base);
    let counted =
        "switchboard_waiting_for_operator{item=\"invite\",source=\"tickets\",state=\"failed\"} 1";
    wait_for("the failed invite in the metrics", || async {
        let text = sb
            .http()
            .get(&metrics)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains(counted).then_some(())
    })
    .await?;
    // Another site's form, or one without the page's token, changes nothing.
    let token = html
        .split("name=\"token\" value=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .context("the page's token")?;
    let post = |site: &'static str, token: &str| {
        sb.http()
            .post(&page)
            .basic_auth("ops", Some("mend-it"))
            .header("sec-fetch-site", site)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}&all=1"))
            .send()
    };
    assert_eq!(post("cross-site", token).await?.status().as_u16(), 403);
    assert_eq!(post("same-site", token).await?.status().as_u16(), 403);
    assert_eq!(post("same-origin", "0123").await?.status().as_u16(), 403);
    let r = sb
        .http()
        .post(&page)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}&all=1"))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 401);
    let (_, listed) = sb.cli(&["failed"])?;
    assert!(listed.contains("1 tries"), "still failed once: {listed}");

    // The operator mends the cause, and presses Retry in the browser.
    bot.moderate(&room, "unban", &bob.user_id).await?;
    let browser = chromium().session().await?;
    let login = base64::engine::general_purpose::STANDARD.encode("ops:mend-it");
    browser
        .headers(json!({"Authorization": format!("Basic {login}")}))
        .await?;
    browser.open(&page).await?;
    let row = browser.text("tr[id^='action:']").await?;
    assert!(row.contains("they are banned from the room"), "{row}");
    if let Ok(dir) = std::env::var("SWITCHBOARD_TEST_SCREENSHOTS") {
        std::fs::write(
            std::path::Path::new(&dir).join("status-page.png"),
            browser.screenshot().await?,
        )?;
    }
    browser
        .click("tr[id^='action:'] button[name='retry']")
        .await?;
    // The click starts the form's POST; under load the page it leads to comes later.
    let notice = wait_for("the page after Retry", || async {
        browser.text("p.notice").await.ok()
    })
    .await?;
    assert_eq!(
        notice,
        "1 item was put back in line and is being tried again."
    );
    // Unbanned, he has left; invited again, he is invited.
    wait_for("bob's invite", || async {
        let m = bot.membership(&room, &bob.user_id).await.ok().flatten();
        (m.as_deref() == Some("invite")).then_some(())
    })
    .await
    .with_context(|| sb.log())?;
    let html = wait_for("the page to show nothing waiting", || async {
        browser.open(&page).await.ok()?;
        let html = browser.source().await.ok()?;
        html.contains("Nothing failed or was set aside.")
            .then_some(html)
    })
    .await?;
    assert!(!html.contains("banned"), "{html}");
    let (_, listed) = sb.cli(&["failed"])?;
    assert_eq!(listed.trim(), "nothing failed or set aside");
    Ok(())
}

/// The systemd unit in `examples/` is one systemd accepts, with the shipped binary, and its
/// sandbox leaves little exposed (`systemd-analyze security`: 2.0 at most, "OK").
#[test]
fn the_systemd_unit_is_valid_and_sandboxed() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("switchboard-unit-{}", harness::suffix()));
    std::fs::create_dir_all(&dir)?;
    let unit = std::fs::read_to_string(harness::repo().join("examples/switchboard.service"))?;
    assert!(unit.contains("ExecStart=/usr/local/bin/switchboard run --config "));
    let path = dir.join("switchboard.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/switchboard",
            env!("CARGO_BIN_EXE_switchboard"),
        ),
    )?;
    let analyze = |args: &[&str]| -> Result<(bool, String)> {
        let out = std::process::Command::new("systemd-analyze")
            .args(args)
            .arg(&path)
            .output()
            .map_err(|e| anyhow::anyhow!("systemd-analyze (Debian's systemd): {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    };
    let (ok, text) = analyze(&["verify"])?;
    let ours: Vec<&str> = text.lines().filter(|l| l.contains("switchboard")).collect();
    assert!(ok && ours.is_empty(), "{text}");
    let (ok, text) = analyze(&["security", "--offline=yes", "--threshold=20"])?;
    assert!(ok, "{text}");
    let level = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_default();
    assert!(level.contains(" OK"), "{level}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The alert rules and the Grafana dashboard in `examples/monitoring` are valid PromQL
/// (`promtool`, from Debian's `prometheus` package), the rules' own unit tests pass, and
/// every metric they use is one Switchboard registers and documents.
#[test]
fn monitoring_examples_use_only_switchboards_metrics() -> Result<()> {
    let repo = harness::repo();
    let dir = repo.join("examples/monitoring");
    let promtool = |args: &[&str]| -> Result<String> {
        let out = std::process::Command::new(repo.join("scripts/promtool.sh"))
            .args(args)
            .current_dir(&dir)
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        anyhow::ensure!(out.status.success(), "promtool {args:?}: {text}");
        Ok(text)
    };
    promtool(&["check", "rules", "switchboard-alerts.yml"])?;
    promtool(&["test", "rules", "switchboard-alerts.test.yml"])?;
    // Each panel's query, with Grafana's variables filled in, checked as a recording rule.
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        dir.join("grafana-dashboard.json"),
    )?)?;
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            exprs.push(
                expr.replace("$instance", ".*")
                    .replace("$__rate_interval", "5m"),
            );
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    let rules: Vec<serde_json::Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| serde_json::json!({"record": format!("dashboard:panel_{i}"), "expr": e}))
        .collect();
    let file = std::env::temp_dir().join(format!("dashboard-{}.yml", harness::suffix()));
    // JSON is YAML.
    let groups = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, groups.to_string())?;
    promtool(&["check", "rules", &file.to_string_lossy()])?;
    let _ = std::fs::remove_file(&file);
    // The metrics used: registered in the code, and in the metrics table of the docs.
    let alerts = std::fs::read_to_string(dir.join("switchboard-alerts.yml"))?;
    let used: std::collections::BTreeSet<String> = exprs
        .iter()
        .map(String::as_str)
        .chain([alerts.as_str()])
        .flat_map(|text| {
            text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("switchboard_"))
                .map(|w| {
                    let w = w.trim_end_matches("_bucket").trim_end_matches("_sum");
                    w.trim_end_matches("_count").to_string()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(used.len() >= 7, "{used:?}");
    let code = std::fs::read_to_string(repo.join("src/metrics.rs"))?;
    let docs = std::fs::read_to_string(repo.join("docs/webhook.md"))?;
    for metric in &used {
        let name = metric.trim_start_matches("switchboard_");
        assert!(
            code.contains(&format!("\"{name}\"")),
            "{metric} is not registered"
        );
        assert!(
            docs.contains(&format!("`{metric}`")),
            "{metric} is not documented"
        );
    }
    Ok(())
}
