//! Upgrades: a database made and filled by the release before the connector SDK (its
//! migrations as it ran them, pending actions of every kind) opens with this one and runs.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sqlx::Row;
use switchboard_connector::testing::TestMatrix;
use switchboard_connector::{Action, ActionContext, ActionRow, Failure, Host};

use crate::harness::{self, Db};

on_both_databases!(a_database_of_the_release_before_opens_and_its_actions_run);

/// The pending actions that release queued, one of each kind, as it stored them.
fn earlier_actions() -> Vec<Value> {
    vec![
        json!({"type": "open_room", "name": "T", "topic": "t", "preset": "private_chat",
               "encrypted": false, "invite": ["@a:x"], "admins": ["@a:x"]}),
        json!({"type": "post", "body": "hi", "notice": false}),
        json!({"type": "close", "notice": "closed", "rename": "[closed] T"}),
        json!({"type": "thread_open", "request": 1, "room": "!b:x", "content": {"body": "r"}}),
        json!({"type": "thread_post", "request": 1, "room": "!b:x", "content": {"body": "p"}}),
        json!({"type": "relay", "request": 1, "room": "!b:x", "to_operators": true,
               "event_type": "m.room.message", "content": {"msgtype": "m.text", "body": "x"},
               "origin": "$o", "origin_ts": 1}),
        json!({"type": "send", "room": "!r:x", "content": {"msgtype": "m.notice", "body": "n"}}),
        json!({"type": "start_chat", "request": 1, "user": "@c:x", "encrypted": false}),
        json!({"type": "invite", "room": "!r:x", "user": "@u:x"}),
        json!({"type": "participant", "user": "@u:x"}),
        json!({"type": "leave", "room": "!r:x"}),
        json!({"type": "kick", "room": "!r:x", "user": "@u:x", "reason": "cancelled"}),
        json!({"type": "pretix_order", "organizer": "o", "event": "e", "code": "ABC12"}),
        json!({"type": "pretix_command", "room": "!r:x", "sender": "@org:x", "body": "!help"}),
    ]
}

/// The helpdesk's actions belong to its source, the rest to the shop's.
fn source_of(action: &Value) -> &'static str {
    match action["type"].as_str() {
        Some("thread_open" | "thread_post" | "relay" | "start_chat") => "desk",
        _ => "shop",
    }
}

async fn a_database_of_the_release_before_opens_and_its_actions_run(db: Db) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("switchboard-upgrade-{}", harness::suffix()));
    std::fs::create_dir_all(&dir)?;
    let (url, dialect) = match db {
        Db::Sqlite => (
            format!("sqlite://{}", dir.join("switchboard.db").display()),
            "sqlite",
        ),
        _ => (harness::postgres_db().await?, "postgres"),
    };
    // The release before: its migrations as it ran them, then what it stored.
    sqlx::any::install_default_drivers();
    let old_url = match db {
        Db::Sqlite => format!("{url}?mode=rwc"),
        _ => url.clone(),
    };
    let pool = sqlx::AnyPool::connect(&old_url).await?;
    let before = harness::repo()
        .join("tests/fixtures/before-connector-sdk")
        .join(dialect);
    sqlx::migrate::Migrator::new(before.as_path())
        .await?
        .run(&pool)
        .await
        .context("the release before's migrations")?;
    let now = 1_700_000_000_000i64;
    sqlx::query(
        "INSERT INTO inbox (source_id, dedupe_key, events, processed_at, created_at, updated_at) \
         VALUES ('shop', 'd1', '[]', $1, $1, $1)",
    )
    .bind(now)
    .execute(&pool)
    .await?;
    for (i, action) in earlier_actions().iter().enumerate() {
        sqlx::query(
            "INSERT INTO outbox (inbox_id, source_id, ticket_key, action, txn_key, \
             next_attempt_at, created_at, updated_at) VALUES (1, $1, $2, $3, $4, $5, $5, $5)",
        )
        .bind(source_of(action))
        .bind(format!("lane{i}"))
        .bind(action.to_string())
        .bind(format!("1.{i}"))
        .bind(now)
        .execute(&pool)
        .await?;
    }
    sqlx::query(
        "INSERT INTO requests (source_id, customer, server, dm_room, title, last_activity_at, \
         created_at, updated_at) VALUES ('desk', '@c:x', 'x', '!dm:x', 'Help', $1, $1, $1)",
    )
    .bind(now)
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO pretix_grants (source_id, order_key, room_id, user_id, created_at) \
         VALUES ('shop', 'o/e/ABC12', '!r:x', '@u:x', $1)",
    )
    .bind(now)
    .execute(&pool)
    .await?;
    pool.close().await;

    // This release opens it: a migration run again would fail (its tables exist), one
    // changed would be refused by its checksum.
    let store = switchboard::store::Store::connect(&url, None)
        .await
        .context("this release opens the database")?;
    let pool = sqlx::AnyPool::connect(&url).await?;
    let versions: Vec<i64> =
        sqlx::query("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&pool)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
    // Each of this release's migrations ran once: the release before's (1 to 11) were
    // recorded already, the newer ones ran now.
    let (core, kind) = match dialect {
        "sqlite" => (
            &switchboard::store::SQLITE_MIGRATIONS,
            switchboard_connector::Dialect::Sqlite,
        ),
        _ => (
            &switchboard::store::POSTGRES_MIGRATIONS,
            switchboard_connector::Dialect::Postgres,
        ),
    };
    let known: Vec<i64> = switchboard::registry::migrator(core, kind)
        .map_err(anyhow::Error::msg)?
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(versions, known);
    assert_eq!(versions[..11], (1..=11).collect::<Vec<i64>>());
    let grants: i64 = sqlx::query("SELECT COUNT(*) FROM pretix_grants")
        .fetch_one(&pool)
        .await?
        .try_get(0)?;
    assert_eq!(grants, 1);

    // Every pending action is one this release runs: the service's own, or a registered
    // connector's.
    let owners = switchboard::registry::action_owners().map_err(anyhow::Error::msg)?;
    type Pending = (i64, String, String, String, String);
    let pending: Vec<Pending> = sqlx::query(
        "SELECT id, source_id, ticket_key, action, txn_key FROM outbox \
         WHERE state = 'pending' ORDER BY id",
    )
    .fetch_all(&pool)
    .await?
    .iter()
    .map(|r| {
        Ok((
            r.try_get(0)?,
            r.try_get(1)?,
            r.try_get(2)?,
            r.try_get(3)?,
            r.try_get(4)?,
        ))
    })
    .collect::<Result<_, sqlx::Error>>()?;
    assert_eq!(pending.len(), earlier_actions().len());
    for (_, _, _, action, _) in &pending {
        let v: Value = serde_json::from_str(action)?;
        let kind = v["type"].as_str().unwrap_or_default();
        if !owners.contains_key(kind) {
            serde_json::from_value::<Action>(v.clone())
                .with_context(|| format!("the service runs {action}"))?;
        }
    }

    // The connectors' run in them: the helpdesk's post the request's thread root, then
    // into the thread, and find its chat exists; pretix's answer a command and read an
    // order's rooms from the migrated tables before asking pretix (not reachable here:
    // tried again).
    let config = "[matrix]\nhomeserver = \"http://127.0.0.1:9\"\nuser = \"@bot:x\"\n\
                  password = \"p\"\n[sources.shop]\nkind = \"pretix\"\n\
                  path_secret = \"0123456789abcdef\"\n[sources.shop.pretix]\n\
                  url = \"http://127.0.0.1:9\"\napi_token = \"t\"\npoll_minutes = 0\n\
                  organisers = [\"@org:x\"]\n[[sources.shop.pretix.events]]\n\
                  organizer = \"o\"\nevent = \"e\"\nrooms = [\"!r:x\"]\n\
                  [sources.desk]\nkind = \"matrix_dm\"\n[sources.desk.matrix_dm]\n\
                  backoffice_room = \"!b:x\"\n";
    let loaded = switchboard::config::parse(config).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let host: std::sync::Arc<dyn Host> = std::sync::Arc::new(switchboard::host::ServiceHost::new(
        store.clone(),
        std::sync::Arc::new(tokio::sync::Notify::new()),
        None,
        switchboard::metrics::Metrics::new(),
        Default::default(),
    ));
    let kinds = switchboard::registry::kinds();
    let mut connectors = std::collections::HashMap::new();
    for (id, (info, checked)) in &loaded.connectors.0 {
        let kind = &kinds[loaded.config.sources[id].kind.as_str()];
        let built = kind
            .build(info, checked, host.clone())
            .map_err(anyhow::Error::msg)?;
        connectors.insert(id.clone(), built);
    }
    let matrix = TestMatrix::default();
    let mut outcomes = Vec::new();
    for (id, source, lane, action, txn_key) in &pending {
        let stored: Value = serde_json::from_str(action)?;
        let kind = stored["type"].as_str().unwrap_or_default().to_string();
        if !owners.contains_key(kind.as_str()) {
            continue;
        }
        let row = ActionRow {
            id: *id,
            source_id: source.clone(),
            lane: lane.clone(),
            txn_key: txn_key.clone(),
            attempts: 1,
        };
        let cx = ActionContext {
            row: &row,
            host: &*host,
            matrix: &matrix,
        };
        let outcome = connectors[source].execute(&cx, &stored).await;
        outcomes.push((kind, outcome));
    }
    let kinds_run: Vec<&str> = outcomes.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds_run,
        [
            "thread_open",
            "thread_post",
            "relay",
            "start_chat",
            "pretix_order",
            "pretix_command"
        ]
    );
    for (kind, outcome) in &outcomes {
        match kind.as_str() {
            "start_chat" => assert!(
                matches!(outcome, Ok(r) if r == "skipped: the chat is !dm:x"),
                "{outcome:?}"
            ),
            "pretix_order" => assert!(
                matches!(outcome, Err(Failure::Transient { .. })),
                "{outcome:?}"
            ),
            _ => assert!(
                matches!(outcome, Ok(r) if r.starts_with("$event")),
                "{kind}: {outcome:?}"
            ),
        }
    }
    let sent = matrix.sent.lock().map(|s| s.clone()).unwrap_or_default();
    // The thread root, then the post and the relay in its thread.
    assert_eq!(sent[0].room, "!b:x");
    assert_eq!(sent[1].content["m.relates_to"]["event_id"], "$event0");
    assert_eq!(sent[2].content["m.relates_to"]["event_id"], "$event0");
    // The command's answer, with the transaction ID the release before gave it.
    let answer = sent.iter().find(|s| s.room == "!r:x").expect("answered");
    assert!(
        answer.content["body"]
            .as_str()
            .is_some_and(|b| b.starts_with("Commands (organisers only)")),
        "{answer:?}"
    );
    assert_eq!(answer.txn, "switchboard.1.13");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
