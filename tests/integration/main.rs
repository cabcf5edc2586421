//! End-to-end tests: Switchboard as a user runs it, against a real Synapse, on SQLite and on
//! PostgreSQL. Each test has its own bot, users and rooms.

mod harness;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use harness::{Db, Setup, Switchboard, synapse, wait_for};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};

/// Runs each named test on SQLite and on PostgreSQL (`NAME::sqlite`, `NAME::postgres`).
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test]
            async fn sqlite() -> Result<()> {
                super::$name(Db::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() -> Result<()> {
                super::$name(Db::Postgres).await
            }
        }
    )*};
}

on_both_databases!(
    ticket_lifecycle,
    redelivery_changes_nothing,
    concurrent_webhooks,
    order_is_kept,
    sigkill_after_accepting,
    sigkill_while_sending,
    homeserver_outage,
    bad_requests_are_refused,
    link_redirects_and_creates,
    helpdesk_relays_both_ways,
    helpdesk_commands,
    helpdesk_start_and_config,
    helpdesk_idle_close,
    helpdesk_relays_media_reactions_edits_redactions,
    honoroit_drop_in,
    helpdesk_outage_longer_than_a_sync,
    pretix_orders_invite_attendees,
    one_room_per_ticket_whatever_the_homeserver_answers,
    long_messages_arrive_whole,
);

async fn start(db: Db, bot: &harness::User, extra: &str) -> Result<Switchboard> {
    Switchboard::start(Setup {
        synapse: synapse(),
        bot,
        db,
        extra: extra.to_string(),
        encryption: false,
        login: None,
    })
    .await
}

fn ticket(key: &str, status: &str, body: Option<&str>, people: &[&str], owner: &str) -> Value {
    json!({
        "ticket": {
            "id": key, "title": format!("Ticket {key} title"), "url": format!("https://desk.example/t/{key}"),
            "status": status, "participants": people, "owner": owner,
        },
        "message": body.map(|b| json!({"body": b})),
    })
}

/// Posts one "open" webhook per message for a ticket, one after the other, each accepted.
async fn post_series(
    sb: &Switchboard,
    key: &str,
    owner: &harness::User,
    messages: impl Iterator<Item = String>,
) -> Result<()> {
    for m in messages {
        let (status, reply) = sb
            .hook(&ticket(key, "open", Some(&m), &[], &owner.user_id))
            .await?;
        assert_eq!(status, 200, "{reply}");
    }
    Ok(())
}

/// Messages the bot posted, waiting until there are `n`.
async fn wait_messages(user: &harness::User, room: &str, n: usize) -> Result<Vec<String>> {
    wait_for(&format!("{n} messages"), || async {
        let m = user.messages(room).await.ok()?;
        (m.len() >= n).then_some(m)
    })
    .await
}

/// Waits for the bot's messages in `room` to reach `want`'s length, gives stragglers 2 s,
/// and asserts the messages are exactly `want`: each once, in order, nothing more.
async fn exactly(user: &harness::User, room: &str, want: &[String]) -> Result<()> {
    let msgs = wait_messages(user, room, want.len()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(msgs, user.messages(room).await?, "nothing more arrived");
    assert_eq!(msgs, want, "each message once, in order");
    Ok(())
}

async fn ticket_lifecycle(db: Db) -> Result<()> {
    let s = synapse();
    let bot = s.user("bot").await?;
    let owner = s.user("owner").await?;
    let agent = s.user("agent").await?;
    let sb = start(db, &bot, "").await?;

    let (status, _) = sb
        .hook(&ticket(
            "T-1",
            "new",
            Some("Printer is on fire"),
            &[&agent.user_id],
            &owner.user_id,
        ))
        .await?;
    assert_eq!(status, 200);
    let room = sb.wait_room("T-1").await?;

    let name = bot
        .state(&room, "m.room.name")
        .await?
        .expect("room has a name");
    assert_eq!(name["name"], "Ticket T-1 title");
    let topic = bot
        .state(&room, "m.room.topic")
        .await?
        .expect("room has a topic");
    assert_eq!(
        topic["topic"],
        "Ticket T-1 title · https://desk.example/t/T-1"
    );
    let pl = bot
        .state(&room, "m.room.power_levels")
        .await?
        .expect("power levels");
    assert_eq!(pl["users"][&owner.user_id], 100, "owner is admin: {pl}");
    assert!(
        pl["users"].get(&bot.user_id).is_none(),
        "room v12: creator not listed"
    );
    let jr = bot
        .state(&room, "m.room.join_rules")
        .await?
        .expect("join rules");
    assert_eq!(jr["join_rule"], "invite", "private room");
    for u in [&owner, &agent] {
        let invites = wait_for("invite", || async {
            let i = u.invites().await.ok()?;
            i.contains(&room).then_some(i)
        })
        .await?;
        assert!(invites.contains(&room));
    }
    assert_eq!(
        wait_messages(&bot, &room, 1).await?,
        vec!["Printer is on fire"]
    );

    // A later payload for the same ticket lands in the same room.
    sb.hook(&ticket(
        "T-1",
        "open",
        Some("Now it smokes"),
        &[&agent.user_id],
        &owner.user_id,
    ))
    .await?;
    assert_eq!(
        wait_messages(&bot, &room, 2).await?,
        vec!["Printer is on fire", "Now it smokes"]
    );

    // Closed: the closing notice and the rename.
    sb.hook(&ticket("T-1", "closed", None, &[], &owner.user_id))
        .await?;
    let msgs = wait_messages(&bot, &room, 3).await?;
    assert_eq!(msgs[2], "Ticket T-1 was closed (closed).");
    let renamed = wait_for("rename", || async {
        let n = bot.state(&room, "m.room.name").await.ok()??;
        (n["name"] == "[closed] Ticket T-1 title").then_some(n)
    })
    .await?;
    assert_eq!(renamed["name"], "[closed] Ticket T-1 title");

    // Reopened: the name back, a notice, and the message in the same room.
    sb.hook(&ticket(
        "T-1",
        "open",
        Some("It is back"),
        &[],
        &owner.user_id,
    ))
    .await?;
    let msgs = wait_messages(&bot, &room, 5).await?;
    assert_eq!(msgs[3..], ["Ticket T-1 was reopened (open).", "It is back"]);
    let name = bot.state(&room, "m.room.name").await?.expect("name");
    assert_eq!(name["name"], "Ticket T-1 title");
    assert_eq!(bot.joined_rooms().await?.len(), 1, "exactly one room");
    Ok(())
}

async fn redelivery_changes_nothing(db: Db) -> Result<()> {
    let s = synapse();
    let bot = s.user("bot").await?;
    let sb = start(db, &bot, "").await?;
    let body = ticket("D-1", "new", Some("once"), &[], &bot.user_id);
    let (_, first) = sb.hook(&body).await?;
    assert_eq!(first["duplicate"], false);
    let room = sb.wait_room("D-1").await?;
    wait_messages(&bot, &room, 1).await?;
    // The same body again (same hash), and twice with the same delivery ID header.
    let (status, again) = sb.hook(&body).await?;
    assert_eq!((status, &again["duplicate"]), (200, &json!(true)));
    let with_id = ticket("D-1", "open", Some("by id"), &[], &bot.user_id).to_string();
    for want_dup in [false, true] {
        let (_, r) = sb
            .hook_raw(
                "tickets",
                with_id.clone().into_bytes(),
                &[("X-Delivery-Id", "dlv-7".into())],
            )
            .await?;
        assert_eq!(r["duplicate"], want_dup);
    }
    wait_messages(&bot, &room, 2).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(bot.messages(&room).await?, vec!["once", "by id"]);
    assert_eq!(bot.joined_rooms().await?.len(), 1);
    Ok(())
}

async fn concurrent_webhooks(db: Db) -> Result<()> {
    let s = synapse();
    let bot = s.user("bot").await?;
    let sb = start(db, &bot, "").await?;
    // 200 webhooks over 50 tickets, all in flight at once (up to 64 connections).
    let bodies: Vec<(String, Value)> = (0..200)
        .map(|i| {
            let key = format!("C-{}", i % 50);
            let body = ticket(
                &key,
                "open",
                Some(&format!("msg {} of {key}", i / 50)),
                &[],
                &bot.user_id,
            );
            (key, body)
        })
        .collect();
    let statuses: Vec<u16> = futures::stream::iter(bodies.iter())
        .map(|(_, b)| async { sb.hook(b).await.map(|r| r.0).unwrap_or(0) })
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    let rooms = wait_for("50 rooms with 4 messages each", || async {
        let mut rooms = HashMap::new();
        for t in 0..50 {
            let key = format!("C-{t}");
            let room = sb.room_of(&key).await.ok()??;
            if bot.messages(&room).await.ok()?.len() < 4 {
                return None;
            }
            rooms.insert(key, room);
        }
        Some(rooms)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let distinct: HashSet<_> = rooms.values().collect();
    assert_eq!(distinct.len(), 50);
    assert_eq!(bot.joined_rooms().await?.len(), 50, "no extra rooms");
    let mut total = 0;
    for (key, room) in &rooms {
        let msgs = bot.messages(room).await?;
        // Messages of one ticket arrive in the order they were accepted... for the same
        // ticket, requests raced each other, so only their set and uniqueness are fixed.
        let set: HashSet<_> = msgs.iter().collect();
        assert_eq!(set.len(), msgs.len(), "duplicate in {key}: {msgs:?}");
        assert_eq!(msgs.len(), 4, "{key}: {msgs:?}");
        assert!(msgs.iter().all(|m| m.ends_with(&format!("of {key}"))));
        total += msgs.len();
    }
    assert_eq!(total, 200);
    Ok(())
}

async fn order_is_kept(db: Db) -> Result<()> {
    let s = synapse();
    let bot = s.user("bot").await?;
    let sb = start(db, &bot, "").await?;
    post_series(&sb, "O-1", &bot, (0..20).map(|i| format!("step {i}"))).await?;
    let room = sb.wait_room("O-1").await?;
    let msgs = wait_messages(&bot, &room, 20).await?;
    let want: Vec<String> = (0..20).map(|i| format!("step {i}")).collect();
    assert_eq!(msgs, want);
    Ok(())
}

async fn sigkill_after_accepting(db: Db) -> Result<()> {
    let s = synapse();
    let bot = s.user("bot").await?;
    let mut sb = start(db, &bot, "").await?;
    post_series(&sb, "K-1", &bot, (0..10).map(|i| format!("k{i}"))).await?;
    // Killed right after the last 2xx: whatever was not delivered yet is in the store.
    sb.kill();
    sb.spawn().await?;
    let room = sb.wait_room("K-1").await?;
    let want: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    exactly(&bot, &room, &want).await?;
    assert_eq!(bot.joined_rooms().await?.len(), 1);
    Ok(())
}

async fn sigkill_while_sending(db: Db) -> Result<()> {
    let s = synapse();
    let bot = s.user("bot").await?;
    let mut sb = start(db, &bot, "").await?;
    post_series(&sb, "W-1", &bot, (0..40).map(|i| format!("w{i}"))).await?;
    // Killed while it works through the ticket's messages, so some are sent but their
    // outcome is not recorded yet.
    let room = sb.wait_room("W-1").await?;
    let seen = wait_messages(&bot, &room, 3).await?.len();
    sb.kill();
    assert!(seen < 40, "the kill came too late to test anything");
    sb.spawn().await?;
    let want: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
    exactly(&bot, &room, &want).await?;
    Ok(())
}

/// Two processes on one PostgreSQL database, webhooks spread over both: each ticket gets one
/// room and each message arrives once, in order.
#[tokio::test]
async fn two_processes_share_one_postgres() -> Result<()> {
    let s = synapse();
    let bot = s.user("bot").await?;
    let url = harness::postgres_db().await?;
    let a = start(Db::PostgresAt(url.clone()), &bot, "").await?;
    // The second starts once the first has stored its session, so both use one device.
    wait_for("first process ready", || async {
        (a.status_of("/ready").await == 200).then_some(())
    })
    .await?;
    let b = start(Db::PostgresAt(url), &bot, "").await?;
    let both = [&a, &b];
    for round in 0..6 {
        let posts = (0..10).map(|t| {
            let body = ticket(
                &format!("P-{t}"),
                "open",
                Some(&format!("m{round} of P-{t}")),
                &[],
                &bot.user_id,
            );
            async move {
                both[(t + round) % 2]
                    .hook(&body)
                    .await
                    .map(|r| r.0)
                    .unwrap_or(0)
            }
        });
        let statuses = futures::future::join_all(posts).await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    let mut rooms = Vec::new();
    for t in 0..10 {
        let key = format!("P-{t}");
        let room = a.wait_room(&key).await?;
        assert_eq!(
            b.room_of(&key).await?,
            Some(room.clone()),
            "one link for both"
        );
        let msgs = wait_messages(&bot, &room, 6).await?;
        let want: Vec<String> = (0..6).map(|r| format!("m{r} of {key}")).collect();
        assert_eq!(msgs, want, "{key}");
        rooms.push((room, want));
    }
    // Stragglers get 2 s for all tickets at once (`exactly` would wait per ticket).
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (room, want) in &rooms {
        assert_eq!(&bot.messages(room).await?, want, "each message once");
    }
    assert_eq!(bot.joined_rooms().await?.len(), 10, "one room per ticket");
    Ok(())
}

async fn homeserver_outage(db: Db) -> Result<()> {
    // A Synapse of this test's own, since it is stopped for 30 s.
    let dir = std::env::temp_dir().join(format!("switchboard-outage-{}", harness::suffix()));
    let hs = harness::Synapse::start(&dir, harness::free_port(), true)?;
    let bot = hs.user("bot").await?;
    let sb = Switchboard::start(Setup {
        synapse: &hs,
        bot: &bot,
        db,
        extra: String::new(),
        encryption: false,
        login: None,
    })
    .await?;
    sb.hook(&ticket("H-1", "new", Some("before"), &[], &bot.user_id))
        .await?;
    let room = sb.wait_room("H-1").await?;
    wait_messages(&bot, &room, 1).await?;

    let ready = |sb: &Switchboard| sb.status_of("/ready");
    wait_for("ready", || async {
        (ready(&sb).await == 200).then_some(())
    })
    .await?;
    hs.stop();
    wait_for("not ready while the homeserver is down", || async {
        (ready(&sb).await == 503).then_some(())
    })
    .await?;
    let started = std::time::Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(30) {
        for key in ["H-1", "H-2"] {
            let (st, _) = sb
                .hook(&ticket(
                    key,
                    "open",
                    Some(&format!("during {i}")),
                    &[],
                    &bot.user_id,
                ))
                .await?;
            assert_eq!(st, 200, "accepted while the homeserver is down");
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    hs.restart()?;
    wait_for("ready again", || async {
        (ready(&sb).await == 200).then_some(())
    })
    .await?;
    let room2 = sb.wait_room("H-2").await?;
    let m1 = wait_messages(&bot, &room, 1 + i).await?;
    let m2 = wait_messages(&bot, &room2, i).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(bot.messages(&room).await?.len(), 1 + i, "none twice");
    let want: Vec<String> = (0..i).map(|n| format!("during {n}")).collect();
    assert_eq!(&m1[1..], &want[..]);
    assert_eq!(m2, want);
    assert_eq!(bot.joined_rooms().await?.len(), 2);
    Ok(())
}

async fn bad_requests_are_refused(db: Db) -> Result<()> {
    let s = synapse();
    let bot = s.user("bot").await?;
    let extra = "[sources.signed]\nkind = \"webhook\"\n[sources.signed.signature]\nsecret = \"topsecret\"\n";
    let sb = start(db, &bot, extra).await?;
    let good = ticket("B-1", "new", Some("hello"), &[], &bot.user_id).to_string();
    let sign = |body: &[u8], key: &[u8]| {
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(key).expect("key");
        m.update(body);
        format!("sha256={}", hex::encode(m.finalize().into_bytes()))
    };
    // (source, body, headers, expected status)
    type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, String)>, u16);
    let cases: Vec<Case> = vec![
        ("signed", good.clone().into_bytes(), vec![], 401),
        (
            "signed",
            good.clone().into_bytes(),
            vec![("X-Signature-256", sign(good.as_bytes(), b"wrong"))],
            401,
        ),
        (
            "signed",
            b"{oops".to_vec(),
            vec![("X-Signature-256", sign(b"{oops", b"topsecret"))],
            400,
        ),
        ("tickets", b"{\"ticket\": ".to_vec(), vec![], 400),
        ("tickets", b"{\"no\": \"ticket\"}".to_vec(), vec![], 422),
        (
            "tickets",
            b"{\"ticket\": {\"id\": 1, \"participants\": [\"bob\"]}}".to_vec(),
            vec![],
            422,
        ),
        ("nope", good.clone().into_bytes(), vec![], 404),
        // What a database or homeserver cannot store is refused the same on both.
        (
            "tickets",
            br#"{"ticket": {"id": "P\u00001"}}"#.to_vec(),
            vec![],
            422,
        ),
        (
            "tickets",
            br#"{"ticket": {"id": "P-2"}, "message": {"body": "a\u0000b"}}"#.to_vec(),
            vec![],
            422,
        ),
        (
            "tickets",
            br#"{"ticket": {"id": "P-3", "note": "\ud800"}}"#.to_vec(),
            vec![],
            400,
        ),
        (
            "tickets",
            format!(r#"{{"ticket": {{"id": "{}"}}}}"#, "k".repeat(300)).into_bytes(),
            vec![],
            422,
        ),
        (
            "tickets",
            br#"{"ticket": {"id": "P-4"}, "delivery_id": "a\nb"}"#.to_vec(),
            vec![],
            422,
        ),
    ];
    for (source, body, headers, want) in cases {
        let (status, reply) = sb.hook_raw(source, body, &headers).await?;
        assert_eq!(status, want, "{source}: {reply}");
        assert!(
            reply["error"].as_str().is_some_and(|e| !e.is_empty()),
            "a reason: {reply}"
        );
    }
    // Oversize, announced: a sender that waits for 100 Continue gets the 413 before it
    // sends the body; one that writes its whole body first reads the 413 and its reason
    // after it (and the connection is closed).
    let head = sb.raw_status("POST /hooks/tickets HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2097152\r\nExpect: 100-continue\r\n\r\n").await?;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    let mut whole = b"POST /hooks/tickets HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2097152\r\n\r\n".to_vec();
    whole.extend(std::iter::repeat_n(b'a', 2 << 20));
    let answer = sb.raw_answer(&whole).await?;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(answer.contains("the body is larger than"), "{answer}");
    // Oversize without an announced length (chunked): refused while reading.
    let chunk = "a".repeat(600 * 1024);
    let chunked = format!(
        "POST /hooks/tickets HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    let answer = sb.raw_answer(chunked.as_bytes()).await?;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("the body is larger than"), "{answer}");
    let status = |path: &'static str| sb.status_of(path);
    assert_eq!(status("/no/such/path").await, 404);
    assert_eq!(status("/hooks/tickets").await, 405);
    // A good signature passes.
    let (status, _) = sb
        .hook_raw(
            "signed",
            good.clone().into_bytes(),
            &[("X-Signature-256", sign(good.as_bytes(), b"topsecret"))],
        )
        .await?;
    assert_eq!(status, 200);
    // Only that one made a room.
    wait_for("the signed ticket's room", || async {
        (bot.joined_rooms().await.ok()?.len() == 1).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(bot.joined_rooms().await?.len(), 1);
    let metrics = sb
        .http()
        .get(format!("{}/metrics", sb.base))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains(
            "switchboard_webhooks_total{outcome=\"rejected_signature\",source=\"signed\"} 2"
        ),
        "{metrics}"
    );
    Ok(())
}

/// A participant the homeserver cannot invite (federation is off: "Federation denied") does
/// not make a room per event: the ticket keeps one room, the others are invited, the
/// failure is told in the room once and listed for the operator, and a retry from the
/// command line tells nothing twice.
async fn one_room_per_ticket_whatever_the_homeserver_answers(db: Db) -> Result<()> {
    let s = synapse();
    let (bot, alice) = (s.user("bot").await?, s.user("alice").await?);
    let sb = start(db, &bot, "").await?;
    let nobody = "@nobody:nowhere.invalid";
    let people = [alice.user_id.as_str(), nobody];
    for (i, status) in ["new", "open", "open"].iter().enumerate() {
        let body = format!("event {i}");
        let (code, reply) = sb
            .hook(&ticket("U-1", status, Some(&body), &people, &alice.user_id))
            .await?;
        assert_eq!(code, 200, "{reply}");
    }
    let room = sb.wait_room("U-1").await?;
    let told = format!("Could not invite {nobody}: ");
    let all = [
        "event 0".to_string(),
        "event 1".into(),
        "event 2".into(),
        told.clone(),
    ];
    let msgs = wait_for("the messages and the notice", || async {
        let m = bot.messages(&room).await.ok()?;
        all.iter()
            .all(|want| m.iter().any(|got| got.starts_with(want.as_str())))
            .then_some(m)
    })
    .await
    .with_context(|| sb.log())?;
    assert_eq!(
        bot.joined_rooms().await?,
        std::slice::from_ref(&room),
        "one room"
    );
    let invited = wait_for("alice's invite", || async {
        bot.membership(&room, &alice.user_id).await.ok().flatten()
    })
    .await?;
    assert_eq!(invited, "invite");
    let notices: Vec<&String> = msgs.iter().filter(|m| m.starts_with(&told)).collect();
    assert_eq!(notices.len(), 1, "{msgs:?}");
    assert!(notices[0].contains("Federation denied"), "{notices:?}");
    // The owner is room admin even though the room was made before anyone was invited.
    let levels = bot
        .state(&room, "m.room.power_levels")
        .await?
        .context("levels")?;
    assert_eq!(levels["users"][&alice.user_id], 100, "{levels}");
    // The operator sees the failed invite, and can try it again.
    let (code, listed) = sb.cli(&["failed"])?;
    assert_eq!(code, 0, "{listed}");
    let line = listed
        .lines()
        .find(|l| l.contains("\tinvite\t"))
        .with_context(|| listed.clone())?;
    assert!(
        line.contains("failed") && line.contains("Federation denied"),
        "{line}"
    );
    let id = line.split('\t').next().context("id")?;
    let (code, out) = sb.cli(&["retry", id])?;
    assert_eq!((code, out.trim()), (0, "1 put back in line"));
    wait_for("the retried invite to fail again", || async {
        let (_, listed) = sb.cli(&["failed"]).ok()?;
        listed
            .lines()
            .any(|l| l.starts_with(id) && l.contains("2 tries"))
            .then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = bot.messages(&room).await?;
    assert_eq!(again.iter().filter(|m| m.starts_with(&told)).count(), 1);
    assert_eq!(bot.joined_rooms().await?.len(), 1);
    Ok(())
}

/// A message too long for one event (80 KB here; the homeserver refuses events over 64 KiB)
/// arrives cut at a paragraph, with a note, and whole as an attached file.
async fn long_messages_arrive_whole(db: Db) -> Result<()> {
    let s = synapse();
    let (bot, alice) = (s.user("bot").await?, s.user("alice").await?);
    let sb = start(db, &bot, "").await?;
    let paragraph = format!("{}\n\n", "A quoted mail line, \"with quotes\". ".repeat(40));
    let long = format!("Start of the article.\n\n{}End.", paragraph.repeat(60));
    assert!(long.len() > 80_000);
    let (code, reply) = sb
        .hook(&ticket("L-1", "new", Some(&long), &[], &alice.user_id))
        .await?;
    assert_eq!(code, 200, "{reply}");
    let room = sb.wait_room("L-1").await?;
    let events = wait_for("the message and its file", || async {
        let t = bot.timeline(&room).await.ok()?;
        let m: Vec<Value> = t
            .into_iter()
            .filter(|e| e["type"] == "m.room.message")
            .collect();
        (m.len() >= 2).then_some(m)
    })
    .await
    .with_context(|| sb.log())?;
    assert_eq!(events.len(), 2, "{events:?}");
    let text = events[0]["content"]["body"].as_str().context("body")?;
    assert!(text.starts_with("Start of the article."));
    assert!(text.len() < long.len());
    let note = format!(
        "\n\n[The message was cut here: it is {} characters long.",
        long.chars().count()
    );
    let (kept, _) = text.split_once(&note).with_context(|| text.to_string())?;
    assert!(long.starts_with(kept), "the cut keeps the start as it was");
    assert!(
        kept.ends_with('.'),
        "cut at a paragraph: {:?}",
        &kept[kept.len() - 20..]
    );
    let file = &events[1]["content"];
    assert_eq!(file["msgtype"], "m.file");
    assert_eq!(file["body"], "message.txt");
    let url = file["url"].as_str().context("url")?;
    assert_eq!(String::from_utf8(bot.download(url).await?)?, long);
    Ok(())
}

async fn link_redirects_and_creates(db: Db) -> Result<()> {
    let s = synapse();
    let bot = s.user("bot").await?;
    let sb = start(
        db,
        &bot,
        "link_create = true\n[sources.plain]\nkind = \"webhook\"\n",
    )
    .await?;
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    // Existing room: a redirect to it.
    sb.hook(&ticket("L-1", "new", None, &[], &bot.user_id))
        .await?;
    let room = sb.wait_room("L-1").await?;
    let r = no_redirect
        .get(format!("{}/link/tickets/L-1", sb.base))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 302);
    assert_eq!(
        r.headers()["location"].to_str()?,
        format!("https://matrix.to/#/{room}")
    );
    // No room yet, creation allowed: made on the spot.
    let r = no_redirect
        .get(format!("{}/link/tickets/L%202", sb.base))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 302, "{}", sb.log());
    let location = r.headers()["location"].to_str()?.to_string();
    let created = location
        .trim_start_matches("https://matrix.to/#/")
        .to_string();
    assert_ne!(created, room);
    let name = bot.state(&created, "m.room.name").await?.expect("a name");
    assert_eq!(name["name"], "Ticket L 2");
    // The same link again: the same room.
    assert_eq!(sb.room_of("L 2").await?, Some(created));
    // Creation not allowed on this source.
    let r = no_redirect
        .get(format!("{}/link/plain/L-3", sb.base))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(bot.joined_rooms().await?.len(), 2);
    Ok(())
}

/// With encryption on (the default), the room is encrypted, the server only ever sees
/// ciphertext, and a participant with a real E2EE client reads the message.
#[tokio::test]
async fn encrypted_rooms_reach_e2ee_clients() -> Result<()> {
    use matrix_sdk::config::SyncSettings;
    use matrix_sdk::room::MessagesOptions;

    let s = synapse();
    let bot = s.user("bot").await?;
    let alice = s.user("alice").await?;
    // Alice's client exists (and has published its keys) before the ticket is opened.
    let store = std::env::temp_dir().join(format!("switchboard-alice-{}", harness::suffix()));
    let client = matrix_sdk::Client::builder()
        .homeserver_url(&s.base_url)
        .sqlite_store(&store, None)
        .build()
        .await?;
    client
        .matrix_auth()
        .login_username(&alice.user_id, &alice.password)
        .send()
        .await?;
    client.sync_once(SyncSettings::default()).await?;

    let sb = Switchboard::start(Setup {
        synapse: s,
        bot: &bot,
        db: Db::Sqlite,
        extra: String::new(),
        encryption: true,
        login: None,
    })
    .await?;
    sb.hook(&ticket(
        "E-1",
        "new",
        Some("secret stuff"),
        &[&alice.user_id],
        &alice.user_id,
    ))
    .await?;
    let room_id = sb.wait_room("E-1").await?;
    let enc = bot
        .state(&room_id, "m.room.encryption")
        .await?
        .expect("encrypted room");
    assert_eq!(enc["algorithm"], "m.megolm.v1.aes-sha2");
    let ev = wait_for("an encrypted event", || async {
        let t = bot.timeline(&room_id).await.ok()?;
        t.into_iter().find(|e| e["type"] == "m.room.encrypted")
    })
    .await?;
    assert!(
        !ev.to_string().contains("secret stuff"),
        "no plaintext on the server"
    );

    let room_id = matrix_sdk::ruma::RoomId::parse(&room_id)?;
    let room = client.join_room_by_id(&room_id).await?;
    let body = wait_for("the decrypted message", || async {
        client
            .sync_once(SyncSettings::default().timeout(Duration::from_millis(200)))
            .await
            .ok()?;
        let msgs = room.messages(MessagesOptions::backward()).await.ok()?;
        msgs.chunk.iter().find_map(|e| {
            let v: Value = e.raw().deserialize_as().ok()?;
            (v["type"] == "m.room.message")
                .then(|| v["content"]["body"].as_str().map(String::from))?
        })
    })
    .await?;
    assert_eq!(body, "secret stuff");
    let _ = std::fs::remove_dir_all(&store);
    Ok(())
}

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
    drop(sb);

    // An allowlist that leaves loopback out.
    let extra = "\n[metrics]\nallow_ips = [\"10.0.0.0/8\"]\n";
    let sb = start(Db::Sqlite, &bot, extra).await?;
    let r = sb.http().get(format!("{}/metrics", sb.base)).send().await?;
    assert_eq!(r.status().as_u16(), 403);
    Ok(())
}

/// Starts a bot serving a helpdesk (extra `options` for `[sources.help.matrix_dm]`) in a new
/// backoffice room of `operator`'s with `others` in it too; returns it and the room, once the
/// bot is in the room.
async fn start_helpdesk(
    db: Db,
    bot: &harness::User,
    operator: &harness::User,
    others: &[&harness::User],
    options: &str,
) -> Result<(Switchboard, String)> {
    let mut invite = vec![bot.user_id.clone()];
    invite.extend(others.iter().map(|u| u.user_id.clone()));
    let backoffice = operator
        .create_room(json!({"preset": "private_chat", "invite": invite}))
        .await?;
    for user in others {
        user.join(&backoffice).await?;
    }
    let sb = start(
        db,
        bot,
        &format!(
            "\n[sources.help]\nkind = \"matrix_dm\"\n\n[sources.help.matrix_dm]\n\
             backoffice_room = \"{backoffice}\"\n{options}"
        ),
    )
    .await?;
    wait_in_room(bot, &backoffice, true).await?;
    Ok((sb, backoffice))
}

/// Waits until `user` is in `room` (`inside`) or no longer is.
async fn wait_in_room(user: &harness::User, room: &str, inside: bool) -> Result<()> {
    let what = format!(
        "{} {} {room}",
        user.user_id,
        if inside { "in" } else { "out of" }
    );
    wait_for(&what, || async {
        let rooms = user.joined_rooms().await.ok()?;
        (rooms.iter().any(|r| r == room) == inside).then_some(())
    })
    .await
}

/// The Matrix DM helpdesk: a customer's direct chat becomes a thread in the backoffice room,
/// and an operator's answer in the thread reaches the customer.
async fn helpdesk_relays_both_ways(db: Db) -> Result<()> {
    let hs = synapse();
    let bot = hs.user("bot").await?;
    let operator = hs.user("operator").await?;
    let customer = hs.user("customer").await?;
    let (mut sb, backoffice) = start_helpdesk(db, &bot, &operator, &[], "").await?;
    let dm = direct_chat(&customer, &bot).await?;
    // Written at once, before the bot has joined: it reads it when it does.
    customer
        .send(
            &dm,
            json!({"msgtype": "m.text", "body": "My printer is on fire"}),
        )
        .await?;
    wait_in_room(&bot, &dm, true).await?;

    let in_thread = |root: &Value| {
        let root = root["event_id"].clone();
        let bot = json!(bot.user_id);
        // What the bot posted in the thread (operators answer there too).
        move |e: &&Value| {
            e["sender"] == bot
                && e["content"]["m.relates_to"]["rel_type"] == "m.thread"
                && e["content"]["m.relates_to"]["event_id"] == root
        }
    };
    let thread = || async {
        let timeline = operator.timeline(&backoffice).await.ok()?;
        let roots: Vec<Value> = timeline
            .iter()
            .filter(|e| {
                e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.starts_with("[OPEN] "))
            })
            .cloned()
            .collect();
        let root = roots.first()?.clone();
        let posts: Vec<Value> = timeline.iter().filter(in_thread(&root)).cloned().collect();
        Some((roots, posts))
    };
    let (roots, posts) = wait_for("the request's thread", || async {
        thread().await.filter(|(_, posts)| !posts.is_empty())
    })
    .await?;
    let server = customer
        .user_id
        .split_once(':')
        .map(|(_, s)| s)
        .unwrap_or_default();
    let title = roots[0]["content"]["body"].as_str().unwrap_or_default();
    assert!(
        title.starts_with(&format!("[OPEN] 1st request from {server} (1st by "))
            && title.ends_with(&format!("({}))", customer.user_id)),
        "{title}"
    );
    let local = customer.user_id[1..].split(':').next().unwrap_or_default();
    assert_eq!(posts[0]["sender"], json!(bot.user_id));
    assert_eq!(
        posts[0]["content"]["body"],
        json!(format!("{local}: My printer is on fire"))
    );
    assert_eq!(
        posts[0]["content"]["com.beeper.per_message_profile"]["id"],
        json!(customer.user_id)
    );

    // An operator answers in the thread; the customer gets the answer from the bot.
    let root_id = roots[0]["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    operator
        .send(
            &backoffice,
            json!({"msgtype": "m.text", "body": "We are on it",
                   "m.relates_to": {"rel_type": "m.thread", "event_id": root_id,
                                    "is_falling_back": true, "m.in_reply_to": {"event_id": root_id}}}),
        )
        .await?;
    let from_bot = || async {
        let timeline = customer.timeline(&dm).await.ok()?;
        Some(
            timeline
                .iter()
                .filter(|e| e["type"] == "m.room.message" && e["sender"] == json!(bot.user_id))
                .filter_map(|e| e["content"]["body"].as_str().map(String::from))
                .collect::<Vec<_>>(),
        )
    };
    wait_for("the answer in the customer's chat", || async {
        from_bot()
            .await
            .filter(|m| m.iter().any(|b| b == "We are on it"))
    })
    .await?;

    // The customer's next message joins the same thread.
    customer
        .send(&dm, json!({"msgtype": "m.text", "body": "Still burning"}))
        .await?;
    let (roots, posts) = wait_for("the second message in the thread", || async {
        thread().await.filter(|(_, posts)| posts.len() >= 2)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (roots_after, posts_after) = thread().await.unwrap_or_default();
    assert_eq!(roots.len(), 1, "one request, one thread");
    assert_eq!(
        (roots_after.len(), posts_after.len()),
        (1, 2),
        "nothing twice"
    );
    let bodies: Vec<&str> = posts
        .iter()
        .filter_map(|p| p["content"]["body"].as_str())
        .collect();
    assert_eq!(
        bodies,
        [
            format!("{local}: My printer is on fire"),
            format!("{local}: Still burning")
        ]
    );
    let answers = from_bot().await.unwrap_or_default();
    assert_eq!(
        answers,
        ["Thank you for contacting us!", "We are on it"],
        "the greeting, then the answer, once each"
    );

    // Killed, and the conversation goes on meanwhile: after the restart everything said
    // while it was down arrives, once.
    sb.kill();
    customer
        .send(&dm, json!({"msgtype": "m.text", "body": "Hello?"}))
        .await?;
    operator
        .send(
            &backoffice,
            json!({"msgtype": "m.text", "body": "Still here",
                   "m.relates_to": {"rel_type": "m.thread", "event_id": root_id,
                                    "is_falling_back": true, "m.in_reply_to": {"event_id": root_id}}}),
        )
        .await?;
    sb.spawn().await?;
    wait_for("what was said while it was down", || async {
        let posted = thread().await.filter(|(_, posts)| posts.len() >= 3)?;
        let answered = from_bot().await.filter(|m| m.len() >= 3)?;
        Some((posted, answered))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (roots, posts) = thread().await.unwrap_or_default();
    let bodies: Vec<&str> = posts
        .iter()
        .filter_map(|p| p["content"]["body"].as_str())
        .collect();
    assert_eq!(roots.len(), 1);
    assert_eq!(
        bodies,
        [
            format!("{local}: My printer is on fire"),
            format!("{local}: Still burning"),
            format!("{local}: Hello?")
        ]
    );
    assert_eq!(
        from_bot().await.unwrap_or_default(),
        ["Thank you for contacting us!", "We are on it", "Still here"]
    );
    Ok(())
}

/// Operators' commands: note, rename, count, help, a refusal, done, and what follows done.
async fn helpdesk_commands(db: Db) -> Result<()> {
    let hs = synapse();
    let bot = hs.user("bot").await?;
    let operator = hs.user("operator").await?;
    let intruder = hs.user("intruder").await?;
    let customer = hs.user("customer").await?;
    let options = format!("operators = [\"{}\"]\n", operator.user_id);
    let (_sb, backoffice) = start_helpdesk(db, &bot, &operator, &[&intruder], &options).await?;
    let dm = direct_chat(&customer, &bot).await?;
    customer
        .send(&dm, json!({"msgtype": "m.text", "body": "Help!"}))
        .await?;
    let root_id = thread_root(&operator, &backoffice, &bot, "[OPEN] ").await?;
    let in_thread = |body: &str| {
        json!({"msgtype": "m.text", "body": body,
               "m.relates_to": {"rel_type": "m.thread", "event_id": root_id,
                                "is_falling_back": true, "m.in_reply_to": {"event_id": root_id}}})
    };
    // The bot's notices in the thread, and its edits of the root.
    let bot_in_thread = || async {
        let timeline = operator.timeline(&backoffice).await.ok()?;
        let notices: Vec<String> = timeline
            .iter()
            .filter(|e| e["sender"] == json!(bot.user_id))
            .filter(|e| e["content"]["m.relates_to"]["event_id"] == json!(root_id))
            .filter(|e| e["content"]["m.relates_to"]["rel_type"] == "m.thread")
            .filter_map(|e| e["content"]["body"].as_str().map(String::from))
            .collect();
        let titles: Vec<String> = timeline
            .iter()
            .filter(|e| e["content"]["m.relates_to"]["rel_type"] == "m.replace")
            .filter_map(|e| {
                e["content"]["m.new_content"]["body"]
                    .as_str()
                    .map(String::from)
            })
            .collect();
        Some((notices, titles))
    };

    let prefix = "!ho";
    operator
        .send(
            &backoffice,
            in_thread(&format!("{prefix} note printer model T-1000")),
        )
        .await?;
    operator
        .send(
            &backoffice,
            in_thread(&format!("{prefix} rename Printer on fire")),
        )
        .await?;
    operator
        .send(
            &backoffice,
            in_thread(&format!("{prefix} count {}", customer.user_id)),
        )
        .await?;
    operator
        .send(&backoffice, in_thread(&format!("{prefix} frobnicate")))
        .await?;
    intruder
        .send(&backoffice, in_thread(&format!("{prefix} done")))
        .await?;
    let (notices, titles) = wait_for("answers to the commands", || async {
        bot_in_thread()
            .await
            .filter(|(n, t)| n.len() >= 4 && !t.is_empty())
    })
    .await?;
    assert_eq!(titles, ["[OPEN] Printer on fire"]);
    // notices[0] is the customer's message.
    assert_eq!(
        notices[1],
        format!(
            "{} has made 1 request(s); {}, 1 in all.",
            customer.user_id,
            customer
                .user_id
                .split_once(':')
                .map(|(_, s)| s)
                .unwrap_or_default()
        )
    );
    assert!(
        notices[2].starts_with("Commands ") && notices[2].contains("!ho done"),
        "{}",
        notices[2]
    );
    assert_eq!(notices[3], "Only operators can run commands.");

    operator
        .send(&backoffice, in_thread(&format!("{prefix} done")))
        .await?;
    wait_in_room(&bot, &dm, false).await?;
    let (_, titles) = bot_in_thread().await.unwrap_or_default();
    assert_eq!(titles, ["[OPEN] Printer on fire", "[DONE] Printer on fire"]);
    let to_customer: Vec<String> = customer
        .timeline(&dm)
        .await?
        .iter()
        .filter(|e| e["sender"] == json!(bot.user_id) && e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(String::from))
        .collect();
    assert_eq!(to_customer.len(), 2, "{to_customer:?}");
    assert!(to_customer[1].starts_with("The operator marked your request as completed."));
    assert!(
        !to_customer.iter().any(|m| m.contains("T-1000")),
        "notes stay in the thread"
    );

    // Later in the closed thread: a notice, nothing sent.
    operator
        .send(&backoffice, in_thread("one more thing"))
        .await?;
    wait_for("the closed-thread notice", || async {
        bot_in_thread()
            .await
            .filter(|(n, _)| n.iter().any(|b| b.starts_with("This request is closed")))
    })
    .await?;

    // A room with more people is left with a notice, and opens no request.
    let friend = hs.user("friend").await?;
    let group = customer
        .create_room(json!({"preset": "private_chat", "invite": [bot.user_id, friend.user_id]}))
        .await?;
    friend.join(&group).await?;
    wait_in_room(&bot, &group, true).await?;
    customer
        .send(&group, json!({"msgtype": "m.text", "body": "Hi all"}))
        .await?;
    wait_in_room(&bot, &group, false).await?;
    let said: Vec<String> = customer
        .timeline(&group)
        .await?
        .iter()
        .filter(|e| e["sender"] == json!(bot.user_id) && e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(String::from))
        .collect();
    assert_eq!(
        said,
        ["I only answer in one-to-one chats. Please start a direct chat with me."]
    );

    // The customer's next chat is a new request.
    let dm2 = direct_chat(&customer, &bot).await?;
    customer
        .send(&dm2, json!({"msgtype": "m.text", "body": "It is back"}))
        .await?;
    wait_for("a second request", || async {
        operator
            .timeline(&backoffice)
            .await
            .ok()?
            .iter()
            .find(|e| {
                e["content"]["body"].as_str().is_some_and(|b| {
                    b.starts_with("[OPEN] 2nd request from ") && b.contains("(2nd by ")
                })
            })
            .map(|_| ())
    })
    .await?;
    let roots = operator
        .timeline(&backoffice)
        .await?
        .iter()
        .filter(|e| {
            e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.starts_with("[OPEN] "))
        })
        .count();
    assert_eq!(roots, 2, "the group room opened no request");
    Ok(())
}

/// Waits until `user` sees a message with exactly this body in `room`.
async fn wait_message(user: &harness::User, room: &str, body: &str) -> Result<()> {
    wait_for(&format!("{body:?} in {room}"), || async {
        let bodies = user.messages(room).await.ok()?;
        bodies.iter().any(|b| b == body).then_some(())
    })
    .await
}

/// A direct chat of `user`'s with the bot, which is invited.
async fn direct_chat(user: &harness::User, bot: &harness::User) -> Result<String> {
    user.create_room(
        json!({"preset": "trusted_private_chat", "is_direct": true, "invite": [bot.user_id]}),
    )
    .await
}

/// The event ID of the bot's thread root in the backoffice room whose body starts with
/// `prefix`, once it is there.
async fn thread_root(
    reader: &harness::User,
    backoffice: &str,
    bot: &harness::User,
    prefix: &str,
) -> Result<String> {
    let root = wait_for("the thread root", || async {
        sent_by(reader, backoffice, &bot.user_id)
            .await
            .ok()?
            .into_iter()
            .find(|e| {
                e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.starts_with(prefix))
            })
    })
    .await?;
    Ok(root["event_id"].as_str().unwrap_or_default().to_string())
}

/// Events `sender` sent into `room`, as `reader` sees them, oldest first.
async fn sent_by(reader: &harness::User, room: &str, sender: &str) -> Result<Vec<Value>> {
    Ok(reader
        .timeline(room)
        .await?
        .into_iter()
        .filter(|e| e["sender"] == json!(sender) && e["type"] == "m.room.message")
        .collect())
}

/// Bodies of the bot's answers in the thread on `root`.
async fn answers(reader: &harness::User, room: &str, bot: &str, root: &str) -> Vec<String> {
    sent_by(reader, room, bot)
        .await
        .unwrap_or_default()
        .iter()
        .filter(|e| e["content"]["m.relates_to"]["rel_type"] == "m.thread")
        .filter(|e| e["content"]["m.relates_to"]["event_id"] == json!(root))
        .filter_map(|e| e["content"]["body"].as_str().map(String::from))
        .collect()
}

/// Content of a message in the thread on `root`.
fn in_thread_of(root: &str, body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body,
           "m.relates_to": {"rel_type": "m.thread", "event_id": root,
                            "is_falling_back": true, "m.in_reply_to": {"event_id": root}}})
}

/// `config` (admins only, persisted across a restart) and `start` (a new direct chat with a
/// user who has not written, and its thread); an operator invited into a chat keeps it open.
async fn helpdesk_start_and_config(db: Db) -> Result<()> {
    let hs = synapse();
    let bot = hs.user("bot").await?;
    let admin = hs.user("admin").await?;
    let operator = hs.user("operator").await?;
    let customer = hs.user("customer").await?;
    let options = format!(
        "admins = [\"{}\"]\nencrypt_started = false\n",
        admin.user_id
    );
    let (mut sb, backoffice) = start_helpdesk(db, &bot, &admin, &[&operator], &options).await?;
    let command = |body: &str| json!({"msgtype": "m.text", "body": body});
    let answer_to = |event: String| {
        let (admin, backoffice, bot) = (&admin, &backoffice, &bot.user_id);
        async move {
            wait_for("an answer", || async {
                answers(admin, backoffice, bot, &event).await.pop()
            })
            .await
        }
    };

    let refused = operator.send(&backoffice, command("!ho config")).await?;
    assert_eq!(
        answer_to(refused).await?,
        "Only admins can see or change the options (`admins` in the config file)."
    );
    let bad = admin
        .send(&backoffice, command("!ho config silent maybe"))
        .await?;
    assert_eq!(
        answer_to(bad).await?,
        "Not changed: `silent` takes true or false."
    );
    let set = admin
        .send(
            &backoffice,
            command("!ho config TEXT.START  Hello from support"),
        )
        .await?;
    assert_eq!(answer_to(set).await?, "text.start = Hello from support");

    // `start`: the customer is invited into a new direct chat; its thread says text.start.
    let started = operator
        .send(
            &backoffice,
            command(&format!("!ho start {}", customer.user_id)),
        )
        .await?;
    let dm = wait_for("the invite", || async {
        customer.invites().await.ok()?.into_iter().next()
    })
    .await?;
    let root = thread_root(&admin, &backoffice, &bot, "[OPEN] 1st request from ").await?;
    let root_body = wait_for("text.start in the thread", || async {
        let said = answers(&admin, &backoffice, &bot.user_id, &root).await;
        said.contains(&"Hello from support".to_string())
            .then_some(said)
    })
    .await?;
    assert_eq!(root_body, ["Hello from support"]);
    assert!(
        answers(&admin, &backoffice, &bot.user_id, &started)
            .await
            .is_empty(),
        "start answers in the new thread, not under the command"
    );

    customer.join(&dm).await?;
    // A trusted private chat: the customer has the bot's power (from room version 12 on as
    // an additional creator); unencrypted as configured.
    let levels = customer
        .state(&dm, "m.room.power_levels")
        .await?
        .unwrap_or_default();
    let create = customer
        .state(&dm, "m.room.create")
        .await?
        .unwrap_or_default();
    let creators = create["additional_creators"].as_array();
    assert!(
        levels["users"][&customer.user_id] == 100
            || creators.is_some_and(|c| c.contains(&json!(customer.user_id))),
        "{create} {levels}"
    );
    assert_eq!(customer.state(&dm, "m.room.encryption").await?, None);
    customer
        .send(&dm, json!({"msgtype": "m.text", "body": "You wanted me?"}))
        .await?;
    admin
        .send(&backoffice, in_thread_of(&root, "Yes: your order"))
        .await?;
    wait_for("the customer's message in the thread", || async {
        let said = answers(&admin, &backoffice, &bot.user_id, &root).await;
        said.iter()
            .any(|b| b.ends_with("You wanted me?"))
            .then_some(())
    })
    .await?;
    wait_message(&customer, &dm, "Yes: your order").await?;

    // An operator invited into the chat joins it; the bot stays and relays on.
    operator
        .send(&backoffice, in_thread_of(&root, "!ho invite"))
        .await?;
    wait_for("the operator's invite", || async {
        operator.invites().await.ok()?.contains(&dm).then_some(())
    })
    .await?;
    operator.join(&dm).await?;
    customer
        .send(&dm, json!({"msgtype": "m.text", "body": "Three of us now"}))
        .await?;
    wait_for("the message after the operator joined", || async {
        let said = answers(&admin, &backoffice, &bot.user_id, &root).await;
        said.iter()
            .any(|b| b.ends_with("Three of us now"))
            .then_some(())
    })
    .await?;
    assert!(bot.joined_rooms().await?.contains(&dm), "the bot stayed");

    // The option survives a restart.
    sb.kill();
    sb.spawn().await?;
    let get = admin
        .send(&backoffice, command("!ho config text.start"))
        .await?;
    let got = answer_to(get).await?;
    assert!(
        got.starts_with("text.start = Hello from support\n"),
        "{got}"
    );
    let show = admin.send(&backoffice, command("!ho config")).await?;
    let listing = answer_to(show).await?;
    assert!(
        listing.contains("\ntext.start = Hello from support"),
        "{listing}"
    );
    assert!(listing.contains("\nsilent = false"), "{listing}");
    Ok(())
}

/// A request without messages for `idle_close_hours` is closed: the customer is told, the
/// thread says why, the root says done, the bot leaves; a message meanwhile postpones it.
async fn helpdesk_idle_close(db: Db) -> Result<()> {
    let hs = synapse();
    let bot = hs.user("bot").await?;
    let operator = hs.user("operator").await?;
    let customer = hs.user("customer").await?;
    // 7.2 seconds.
    let (_sb, backoffice) =
        start_helpdesk(db, &bot, &operator, &[], "idle_close_hours = 0.002\n").await?;
    let dm = direct_chat(&customer, &bot).await?;
    customer
        .send(&dm, json!({"msgtype": "m.text", "body": "Hello?"}))
        .await?;
    let root = thread_root(&operator, &backoffice, &bot, "[OPEN] ").await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    customer
        .send(&dm, json!({"msgtype": "m.text", "body": "Anyone?"}))
        .await?;
    wait_in_room(&bot, &dm, false).await?;

    let timeline = customer.timeline(&dm).await?;
    let ts = |pred: &dyn Fn(&Value) -> bool| {
        timeline
            .iter()
            .find(|e| pred(e))
            .and_then(|e| e["origin_server_ts"].as_i64())
    };
    let last = ts(&|e| e["content"]["body"] == "Anyone?").unwrap_or_default();
    let closed = ts(&|e| {
        e["sender"] == json!(bot.user_id)
            && e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.starts_with("There was no activity for a while."))
    })
    .ok_or_else(|| anyhow::anyhow!("no closing text in {timeline:?}"))?;
    assert!(
        closed - last >= 7_200,
        "closed {} ms after the last message",
        closed - last
    );
    let said = answers(&operator, &backoffice, &bot.user_id, &root).await;
    assert!(
        said.contains(&"Closed: no message for 0.002 hour(s).".to_string()),
        "{said:?}"
    );
    let titles: Vec<String> = operator
        .timeline(&backoffice)
        .await?
        .iter()
        .filter(|e| e["content"]["m.relates_to"]["rel_type"] == "m.replace")
        .filter_map(|e| {
            e["content"]["m.new_content"]["body"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(titles.len(), 1, "{titles:?}");
    assert!(
        titles[0].starts_with("[DONE] 1st request from "),
        "{titles:?}"
    );
    Ok(())
}

/// Media, reactions, edits and redactions follow their messages both ways.
async fn helpdesk_relays_media_reactions_edits_redactions(db: Db) -> Result<()> {
    let hs = synapse();
    let bot = hs.user("bot").await?;
    let operator = hs.user("operator").await?;
    let customer = hs.user("customer").await?;
    let (sb, backoffice) = start_helpdesk(db, &bot, &operator, &[], "").await?;
    let dm = direct_chat(&customer, &bot).await?;
    wait_in_room(&bot, &dm, true).await?;
    let hello = customer
        .send(&dm, json!({"msgtype": "m.text", "body": "Hello"}))
        .await?;
    let photo = json!({"msgtype": "m.image", "body": "printer.png",
                       "url": "mxc://localhost/printerphoto", "info": {"mimetype": "image/png"}});
    customer.send(&dm, photo).await?;
    // The bot's copy in `room` (as `reader` sees it) of a message whose body ends so.
    let copy_of = |reader: &'static str, room: String, ending: &'static str| {
        let (reader, bot) = (
            if reader == "operator" {
                &operator
            } else {
                &customer
            },
            &bot.user_id,
        );
        async move {
            wait_for(&format!("the copy of {ending:?}"), || async {
                sent_by(reader, &room, bot)
                    .await
                    .ok()?
                    .into_iter()
                    .find(|e| {
                        e["content"]["body"]
                            .as_str()
                            .is_some_and(|b| b.ends_with(ending))
                    })
            })
            .await
        }
    };
    let hello_copy = copy_of("operator", backoffice.clone(), "Hello").await?;
    let photo_copy = copy_of("operator", backoffice.clone(), "printer.png").await?;
    assert_eq!(photo_copy["content"]["msgtype"], "m.image");
    assert_eq!(photo_copy["content"]["url"], "mxc://localhost/printerphoto");
    let root = hello_copy["content"]["m.relates_to"]["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let hello_copy = hello_copy["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let answer = operator
        .send(&backoffice, in_thread_of(&root, "Hi there"))
        .await?;
    let answer_copy = copy_of("customer", dm.clone(), "Hi there").await?;
    let answer_copy = answer_copy["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    // Reactions: each to the other side's counterpart, by the bot.
    let reaction = |target: &str, key: &str| json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": key}});
    let thumbs = customer
        .send_event(&dm, "m.reaction", reaction(&answer_copy, "👍"))
        .await?;
    operator
        .send_event(&backoffice, "m.reaction", reaction(&hello_copy, "❤️"))
        .await?;
    // Edits: the counterpart is edited.
    let edit = |target: &str, body: &str| {
        json!({"msgtype": "m.text", "body": format!("* {body}"),
               "m.new_content": {"msgtype": "m.text", "body": body},
               "m.relates_to": {"rel_type": "m.replace", "event_id": target}})
    };
    customer.send(&dm, edit(&hello, "Hello, world")).await?;
    operator
        .send(&backoffice, edit(&answer, "Hi there, how can I help?"))
        .await?;

    let bot_events = |reader: &'static str, room: String| {
        let (reader, bot) = (
            if reader == "operator" {
                &operator
            } else {
                &customer
            },
            bot.user_id.clone(),
        );
        async move {
            reader
                .timeline(&room)
                .await
                .unwrap_or_default()
                .into_iter()
                .filter(|e| e["sender"] == json!(bot))
                .collect::<Vec<Value>>()
        }
    };
    let about = |events: &[Value], kind: &str, rel: &str, target: &str| -> Option<Value> {
        events
            .iter()
            .find(|e| {
                e["type"] == kind
                    && e["content"]["m.relates_to"]["rel_type"] == rel
                    && e["content"]["m.relates_to"]["event_id"] == json!(target)
            })
            .cloned()
    };
    let (in_backoffice, in_dm) = wait_for("reactions and edits on both sides", || async {
        let b = bot_events("operator", backoffice.clone()).await;
        let d = bot_events("customer", dm.clone()).await;
        let all = about(&b, "m.reaction", "m.annotation", &answer).is_some()
            && about(&d, "m.reaction", "m.annotation", &hello).is_some()
            && about(&b, "m.room.message", "m.replace", &hello_copy).is_some()
            && about(&d, "m.room.message", "m.replace", &answer_copy).is_some();
        all.then_some((b, d))
    })
    .await?;
    let r = about(&in_backoffice, "m.reaction", "m.annotation", &answer).unwrap_or_default();
    assert_eq!(r["content"]["m.relates_to"]["key"], "👍");
    let r = about(&in_dm, "m.reaction", "m.annotation", &hello).unwrap_or_default();
    assert_eq!(r["content"]["m.relates_to"]["key"], "❤️");
    let e = about(&in_backoffice, "m.room.message", "m.replace", &hello_copy).unwrap_or_default();
    let new_body = e["content"]["m.new_content"]["body"]
        .as_str()
        .unwrap_or_default();
    assert!(new_body.ends_with(": Hello, world"), "{e}");
    assert_eq!(
        e["content"]["m.new_content"]["com.beeper.per_message_profile"]["id"],
        json!(customer.user_id),
        "{e}"
    );
    let e = about(&in_dm, "m.room.message", "m.replace", &answer_copy).unwrap_or_default();
    assert_eq!(
        e["content"]["m.new_content"],
        json!({"msgtype": "m.text", "body": "Hi there, how can I help?"})
    );

    // Redactions: the counterpart is redacted; taking back a reaction takes back its copy.
    customer.redact(&dm, &hello).await?;
    operator.redact(&backoffice, &answer).await?;
    customer.redact(&dm, &thumbs).await?;
    let thumbs_copy = about(&in_backoffice, "m.reaction", "m.annotation", &answer)
        .and_then(|e| e["event_id"].as_str().map(String::from))
        .unwrap_or_default();
    let redacted = |reader: &'static str, room: String, event: String| {
        let reader = if reader == "operator" {
            &operator
        } else {
            &customer
        };
        async move {
            wait_for(&format!("{event} redacted"), || async {
                reader
                    .timeline(&room)
                    .await
                    .ok()?
                    .into_iter()
                    .find(|e| {
                        e["event_id"] == json!(event)
                            && e["unsigned"]["redacted_because"].is_object()
                    })
                    .map(|_| ())
            })
            .await
        }
    };
    redacted("operator", backoffice.clone(), hello_copy).await?;
    redacted("customer", dm.clone(), answer_copy).await?;
    redacted("operator", backoffice.clone(), thumbs_copy).await?;

    // Exactly once: one copy of each, one reaction each way.
    let b = bot_events("operator", backoffice.clone()).await;
    let reactions = b.iter().filter(|e| e["type"] == "m.reaction").count();
    assert_eq!(reactions, 1, "{b:?}");
    let lines = [
        "switchboard_helpdesk_requests_opened_total{source=\"help\"} 1",
        "switchboard_helpdesk_relayed_total{direction=\"to_operators\",kind=\"message\",source=\"help\"} 2",
        "switchboard_helpdesk_relayed_total{direction=\"to_customer\",kind=\"reaction\",source=\"help\"} 1",
        "switchboard_helpdesk_relayed_total{direction=\"to_operators\",kind=\"redaction\",source=\"help\"} 2",
        "switchboard_helpdesk_relay_seconds_count{direction=\"to_customer\"} 4",
        "switchboard_helpdesk_relay_seconds_count{direction=\"to_operators\"} 6",
    ];
    // The counters move once each action is recorded, just after the homeserver has it.
    let metrics = wait_for("the helpdesk metrics", || async {
        let url = format!("{}/metrics", sb.base);
        let text = sb.http().get(url).send().await.ok()?.text().await.ok()?;
        lines.iter().all(|l| text.contains(l)).then_some(text)
    })
    .await?;
    assert!(
        !metrics.contains(&customer.user_id),
        "no user IDs in metrics"
    );
    Ok(())
}

/// With no config file, Honoroit's variables run the helpdesk as Honoroit would: its
/// database settings (a SQLite file, or a PostgreSQL URL), its port, its metrics login, its
/// `!ho` prefix; variables that change nothing are named in warnings. A request Honoroit
/// left open goes on in its thread.
async fn honoroit_drop_in(db: Db) -> Result<()> {
    let hs = synapse();
    let bot = hs.user("bot").await?;
    let operator = hs.user("operator").await?;
    let customer = hs.user("customer").await?;
    let earlier = hs.user("earlier").await?;
    let backoffice = operator
        .create_room(json!({"preset": "private_chat", "invite": [bot.user_id]}))
        .await?;
    // What Honoroit left on this account: a customer's chat with its thread, mapped in the
    // account data.
    bot.join(&backoffice).await?;
    let old_chat = direct_chat(&earlier, &bot).await?;
    bot.join(&old_chat).await?;
    let old_root = bot
        .send(
            &backoffice,
            json!({"msgtype": "m.notice", "body": "[OPEN] 1st request from localhost (1st by earlier)"}),
        )
        .await?;
    // Honoroit ran with HONOROIT_DATA_SECRET: keys and values are sealed with it.
    let secret = "32 bytes of Honoroit data secret";
    let sealed = |k: &str, v: &str| {
        let mut content = serde_json::Map::new();
        content.insert(
            honoroit_sealed(secret, k),
            honoroit_sealed(secret, v).into(),
        );
        Value::Object(content)
    };
    bot.set_account_data(
        &format!("cc.etke.honoroit.mapping.{old_chat}"),
        sealed("id", &old_root),
    )
    .await?;
    bot.set_account_data(
        &format!("cc.etke.honoroit.mapping.{old_root}"),
        sealed("id", &old_chat),
    )
    .await?;
    bot.set_account_data(
        "cc.etke.honoroit.config",
        sealed("text.greetings", "Welcome to the helpdesk of old."),
    )
    .await?;
    let localpart = bot
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let port = harness::free_port();
    let sqlite_file = std::env::temp_dir().join(format!("honoroit-{}.db", harness::suffix()));
    let (dialect, dsn) = match db {
        Db::Sqlite => ("sqlite3", sqlite_file.display().to_string()),
        _ => ("postgres", harness::postgres_db().await?),
    };
    let env: Vec<(String, String)> = [
        ("HOMESERVER", hs.base_url.as_str()),
        ("LOGIN", &localpart),
        ("PASSWORD", &bot.password),
        ("ROOMID", &backoffice),
        ("PORT", &port.to_string()),
        ("NOENCRYPTION", "1"),
        ("DATA_SECRET", secret),
        ("DB_DIALECT", dialect),
        ("DB_DSN", &dsn),
        ("METRICS_LOGIN", "prom"),
        ("METRICS_PASSWORD", "scrape"),
        ("CACHESIZE", "2000"),
        ("MONITORING_SENTRY_DSN", "https://key@sentry.example/1"),
    ]
    .into_iter()
    .map(|(k, v)| (format!("HONOROIT_{k}"), v.to_string()))
    .collect();
    let sb = Switchboard::start_env(env, port).await?;
    wait_in_room(&bot, &backoffice, true).await?;
    wait_for("the takeover", || async {
        sb.log()
            .contains("took over Honoroit's open requests")
            .then_some(())
    })
    .await?;
    earlier
        .send(
            &old_chat,
            json!({"msgtype": "m.text", "body": "back again"}),
        )
        .await?;
    wait_for("the message in Honoroit's thread", || async {
        let said = answers(&operator, &backoffice, &bot.user_id, &old_root).await;
        said.iter()
            .any(|b| b.ends_with(": back again"))
            .then_some(())
    })
    .await?;

    let dm = direct_chat(&customer, &bot).await?;
    customer
        .send(
            &dm,
            json!({"msgtype": "m.text", "body": "Is this Honoroit?"}),
        )
        .await?;
    let root = thread_root(
        &operator,
        &backoffice,
        &bot,
        // The request taken over counts.
        "[OPEN] 2nd request from localhost (1st by ",
    )
    .await?;
    // The greeting for the bot's own homeserver (although the login named only the
    // localpart), as set in Honoroit.
    wait_message(&customer, &dm, "Welcome to the helpdesk of old.").await?;
    operator
        .send(&backoffice, in_thread_of(&root, "!ho done"))
        .await?;
    wait_in_room(&bot, &dm, false).await?;

    match db {
        Db::Sqlite => {
            use sqlx::{Connection, Row};
            let url = format!("sqlite://{}", sqlite_file.display());
            let mut conn = sqlx::SqliteConnection::connect(&url).await?;
            let closed: i64 =
                sqlx::query("SELECT count(*) FROM requests WHERE closed_at IS NOT NULL")
                    .fetch_one(&mut conn)
                    .await?
                    .get(0);
            assert_eq!(closed, 1, "the request is in HONOROIT_DB_DSN's file");
        }
        _ => {
            use sqlx::{Connection, Row};
            let mut conn = sqlx::PgConnection::connect(&dsn).await?;
            let closed: i64 =
                sqlx::query("SELECT count(*) FROM requests WHERE closed_at IS NOT NULL")
                    .fetch_one(&mut conn)
                    .await?
                    .get(0);
            assert_eq!(closed, 1, "the request is in HONOROIT_DB_DSN's database");
        }
    }
    let url = format!("{}/metrics", sb.base);
    let anonymous = sb.http().get(&url).send().await?.status().as_u16();
    assert_eq!(anonymous, 401, "HONOROIT_METRICS_LOGIN protects /metrics");
    let scraped = sb
        .http()
        .get(&url)
        .basic_auth("prom", Some("scrape"))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        scraped.contains(
            "switchboard_helpdesk_requests_closed_total{how=\"command\",source=\"honoroit\"} 1"
        ),
        "{scraped}"
    );
    let log = sb.log();
    for named in ["HONOROIT_CACHESIZE", "HONOROIT_MONITORING_SENTRY_DSN"] {
        assert!(
            log.lines().any(|l| l.contains("WARN") && l.contains(named)),
            "{named} in a warning: {log}"
        );
    }
    assert!(!log.contains(secret), "secrets stay out of the log");
    let _ = std::fs::remove_file(&sqlite_file);
    Ok(())
}

/// A value sealed as Honoroit seals its account data: base64 of a random nonce and the
/// AES-256-GCM ciphertext, keyed with the 32-byte data secret itself.
fn honoroit_sealed(secret: &str, plain: &str) -> String {
    use aes_gcm::aead::{Aead, KeyInit};
    use base64::Engine as _;
    let nonce: [u8; 12] = rand::random();
    let sealed = aes_gcm::Aes256Gcm::new_from_slice(secret.as_bytes())
        .expect("a 32-byte secret")
        .encrypt(aes_gcm::Nonce::from_slice(&nonce), plain.as_bytes())
        .expect("sealed");
    let mut raw = nonce.to_vec();
    raw.extend(sealed);
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// A real end-to-end-encrypting client for `user`, logged in and synced once.
async fn e2ee_client(user: &harness::User) -> Result<(matrix_sdk::Client, std::path::PathBuf)> {
    let store = std::env::temp_dir().join(format!("switchboard-e2ee-{}", harness::suffix()));
    let client = matrix_sdk::Client::builder()
        .homeserver_url(&synapse().base_url)
        .sqlite_store(&store, None)
        .build()
        .await?;
    client
        .matrix_auth()
        .login_username(&user.user_id, &user.password)
        .send()
        .await?;
    client
        .sync_once(matrix_sdk::config::SyncSettings::default())
        .await?;
    Ok((client, store))
}

/// The messages of a room as `client` decrypts them, oldest first (after a short sync).
async fn decrypted(client: &matrix_sdk::Client, room: &str) -> Option<Vec<Value>> {
    use matrix_sdk::config::SyncSettings;
    use matrix_sdk::room::MessagesOptions;
    client
        .sync_once(SyncSettings::default().timeout(Duration::from_millis(200)))
        .await
        .ok()?;
    let room = client.get_room(&matrix_sdk::ruma::RoomId::parse(room).ok()?)?;
    let mut options = MessagesOptions::backward();
    options.limit = 100u32.into();
    let msgs = room.messages(options).await.ok()?;
    let mut events: Vec<Value> = msgs
        .chunk
        .iter()
        .filter_map(|e| e.raw().deserialize_as::<Value>().ok())
        .filter(|v| v["type"] == "m.room.message")
        .collect();
    events.reverse();
    Some(events)
}

/// The helpdesk in encrypted rooms: the customer's direct chat and the backoffice room are
/// both encrypted, the customer and the operator use real E2EE clients, the server sees only
/// ciphertext, and both sides read each other.
#[tokio::test]
async fn helpdesk_encrypted() -> Result<()> {
    let hs = synapse();
    let bot = hs.user("bot").await?;
    let operator = hs.user("operator").await?;
    let customer = hs.user("customer").await?;
    let (op_client, op_store) = e2ee_client(&operator).await?;
    let (cu_client, cu_store) = e2ee_client(&customer).await?;
    let encrypted = json!({"type": "m.room.encryption", "state_key": "",
                           "content": {"algorithm": "m.megolm.v1.aes-sha2"}});
    let backoffice = operator
        .create_room(json!({"preset": "private_chat", "invite": [bot.user_id],
                            "initial_state": [encrypted]}))
        .await?;
    let _sb = Switchboard::start(Setup {
        synapse: hs,
        bot: &bot,
        db: Db::Sqlite,
        extra: format!(
            "\n[sources.help]\nkind = \"matrix_dm\"\n\n[sources.help.matrix_dm]\n\
             backoffice_room = \"{backoffice}\"\n"
        ),
        encryption: true,
        login: None,
    })
    .await?;
    wait_in_room(&bot, &backoffice, true).await?;
    let dm = customer
        .create_room(json!({"preset": "trusted_private_chat", "is_direct": true,
                            "invite": [bot.user_id], "initial_state": [encrypted]}))
        .await?;
    wait_in_room(&bot, &dm, true).await?;

    // The customer writes with their client: encrypted for the bot's device.
    wait_for("the customer's client to know the chat", || async {
        cu_client
            .sync_once(
                matrix_sdk::config::SyncSettings::default().timeout(Duration::from_millis(200)),
            )
            .await
            .ok()?;
        cu_client.get_room(&matrix_sdk::ruma::RoomId::parse(&dm).ok()?)
    })
    .await?
    .send_raw(
        "m.room.message",
        json!({"msgtype": "m.text", "body": "My card number is secret"}),
    )
    .await?;

    // The operator's client reads the thread: the root and the customer's words.
    let in_backoffice = wait_for("the decrypted thread", || async {
        let events = decrypted(&op_client, &backoffice).await?;
        events
            .iter()
            .any(|e| {
                e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.ends_with("My card number is secret"))
            })
            .then_some(events)
    })
    .await?;
    let root = in_backoffice
        .iter()
        .find(|e| {
            e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.starts_with("[OPEN] "))
        })
        .and_then(|e| e["event_id"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(!root.is_empty(), "{in_backoffice:?}");
    let on_server = operator.timeline(&backoffice).await?;
    assert!(
        !serde_json::to_string(&on_server)?.contains("card number"),
        "only ciphertext on the server"
    );
    assert!(
        on_server
            .iter()
            .any(|e| e["type"] == "m.room.encrypted" && e["sender"] == json!(bot.user_id)),
        "the bot encrypts in the backoffice room"
    );

    // The operator answers in the thread with their client; the customer's client reads it.
    let op_room = op_client
        .get_room(&matrix_sdk::ruma::RoomId::parse(&backoffice)?)
        .ok_or_else(|| anyhow::anyhow!("the operator's client knows the backoffice"))?;
    op_room
        .send_raw("m.room.message", in_thread_of(&root, "Never send it here"))
        .await?;
    wait_for("the decrypted answer", || async {
        decrypted(&cu_client, &dm)
            .await?
            .iter()
            .any(|e| e["content"]["body"] == "Never send it here")
            .then_some(())
    })
    .await?;
    assert!(
        !serde_json::to_string(&customer.timeline(&dm).await?)?.contains("Never send"),
        "only ciphertext in the chat on the server"
    );
    let _ = std::fs::remove_dir_all(&op_store);
    let _ = std::fs::remove_dir_all(&cu_store);
    Ok(())
}

/// Down while both sides write more than one sync response carries (its timeline is then
/// "limited"): after the restart the left-out part is read back, and every message arrives
/// once, in order.
async fn helpdesk_outage_longer_than_a_sync(db: Db) -> Result<()> {
    let hs = synapse();
    let bot = hs.user("bot").await?;
    let operator = hs.user("operator").await?;
    let customer = hs.user("customer").await?;
    let (mut sb, backoffice) = start_helpdesk(db, &bot, &operator, &[], "").await?;
    let dm = direct_chat(&customer, &bot).await?;
    customer
        .send(&dm, json!({"msgtype": "m.text", "body": "first"}))
        .await?;
    let root = thread_root(&operator, &backoffice, &bot, "[OPEN] ").await?;
    wait_for("the first message in the thread", || async {
        let said = answers(&operator, &backoffice, &bot.user_id, &root).await;
        (!said.is_empty()).then_some(())
    })
    .await?;

    sb.kill();
    let (asked, replied) = (30, 15);
    for i in 1..=asked {
        customer
            .send(
                &dm,
                json!({"msgtype": "m.text", "body": format!("question {i}")}),
            )
            .await?;
    }
    for i in 1..=replied {
        operator
            .send(&backoffice, in_thread_of(&root, &format!("reply {i}")))
            .await?;
    }
    sb.spawn().await?;
    let in_thread = || async { answers(&operator, &backoffice, &bot.user_id, &root).await };
    let in_dm = || async {
        sent_by(&customer, &dm, &bot.user_id)
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(|e| e["content"]["body"].as_str().map(String::from))
            .filter(|b| b.starts_with("reply "))
            .collect::<Vec<String>>()
    };
    wait_for("everything said while it was down", || async {
        let t = in_thread().await;
        let d = in_dm().await;
        (t.len() > asked && d.len() >= replied).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let local = customer
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let mut expected = vec![format!("{local}: first")];
    expected.extend((1..=asked).map(|i| format!("{local}: question {i}")));
    assert_eq!(in_thread().await, expected, "each once, in order");
    let expected: Vec<String> = (1..=replied).map(|i| format!("reply {i}")).collect();
    assert_eq!(in_dm().await, expected, "each once, in order");
    assert!(
        sb.log().contains("read back events the sync left out"),
        "the outage was longer than one sync response"
    );
    Ok(())
}

/// A customer's message that cannot reach the operators for good (here: the bot was
/// removed from the backoffice room) gets `text.error` back, instead of silence.
#[tokio::test]
async fn helpdesk_tells_the_customer_what_could_not_be_relayed() -> Result<()> {
    let hs = synapse();
    let bot = hs.user("bot").await?;
    let operator = hs.user("operator").await?;
    let customer = hs.user("customer").await?;
    let (_sb, backoffice) = start_helpdesk(Db::Sqlite, &bot, &operator, &[], "").await?;
    let dm = direct_chat(&customer, &bot).await?;
    customer
        .send(&dm, json!({"msgtype": "m.text", "body": "one"}))
        .await?;
    wait_for("the first message in the thread", || async {
        sent_by(&operator, &backoffice, &bot.user_id)
            .await
            .ok()?
            .iter()
            .any(|e| {
                e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.ends_with(": one"))
            })
            .then_some(())
    })
    .await?;
    operator.kick(&backoffice, &bot.user_id).await?;
    customer
        .send(&dm, json!({"msgtype": "m.text", "body": "two"}))
        .await?;
    let told = wait_for("the error text", || async {
        let said: Vec<String> = sent_by(&customer, &dm, &bot.user_id)
            .await
            .ok()?
            .iter()
            .filter_map(|e| e["content"]["body"].as_str().map(String::from))
            .collect();
        (said.len() >= 2).then_some(said)
    })
    .await?;
    assert_eq!(told.len(), 2, "{told:?}");
    assert!(told[1].starts_with("Something is wrong."), "{told:?}");
    Ok(())
}

/// A message the bot cannot decrypt is kept, across a restart, while its room key may still
/// come; once the wait is over, the operators read a notice in its place, in the thread.
#[tokio::test]
async fn helpdesk_keeps_undecryptable_messages_until_the_wait_is_over() -> Result<()> {
    let hs = synapse();
    let bot = hs.user("bot").await?;
    let operator = hs.user("operator").await?;
    let customer = hs.user("customer").await?;
    let (mut sb, backoffice) =
        start_helpdesk(Db::Sqlite, &bot, &operator, &[], "key_wait_minutes = 0.1\n").await?;
    let dm = direct_chat(&customer, &bot).await?;
    customer
        .send(&dm, json!({"msgtype": "m.text", "body": "hello"}))
        .await?;
    let posts = |body: &'static str| {
        let (operator, backoffice, bot) = (&operator, &backoffice, &bot.user_id);
        async move {
            sent_by(operator, backoffice, bot)
                .await
                .ok()
                .unwrap_or_default()
                .iter()
                .filter(|e| {
                    e["content"]["body"]
                        .as_str()
                        .is_some_and(|b| b.ends_with(body))
                })
                .cloned()
                .collect::<Vec<_>>()
        }
    };
    let hello = wait_for("the first message in the thread", || async {
        posts(": hello").await.pop()
    })
    .await?;
    // A message of a session whose key the bot never got.
    customer
        .send_event(
            &dm,
            "m.room.encrypted",
            json!({"algorithm": "m.megolm.v1.aes-sha2",
                   "sender_key": "mV8bd0uXO4Gr1c1N3bhfx4nGP0ZHPmHf4dYhPHjRlA8",
                   "session_id": "Ty/iMtPKkzX3ne6rOt+ZeR6WqhQa6w7JUdL7Rqd0LWk",
                   "device_id": "CUSTOMERDEVICE",
                   "ciphertext": "AwgAEnBH2X5xk0bJQ7Xq1m3Za8hTQyZbY2Vc1W0sY2zh"}),
        )
        .await?;
    wait_for("the message kept", || async {
        sb.log().contains("waits for its room key").then_some(())
    })
    .await?;
    sb.kill();
    sb.spawn().await?;
    let notice = wait_for("the notice in its place", || async {
        posts("could not be decrypted: its key never reached the helpdesk)")
            .await
            .pop()
    })
    .await?;
    assert_eq!(
        notice["content"]["m.relates_to"]["event_id"], hello["content"]["m.relates_to"]["event_id"],
        "in the request's thread"
    );
    assert!(sb.log().contains("gave up waiting for an event's room key"));
    customer
        .send(&dm, json!({"msgtype": "m.text", "body": "still there?"}))
        .await?;
    wait_for("a later message", || async {
        posts(": still there?").await.pop()
    })
    .await?;
    let notices = posts("could not be decrypted: its key never reached the helpdesk)").await;
    assert_eq!(notices.len(), 1, "given up once: {notices:?}");
    Ok(())
}

/// Who may open requests: an invite from a denied user, or into an ignored room, is
/// declined; an allowed customer's is accepted.
#[tokio::test]
async fn helpdesk_access_lists() -> Result<()> {
    let hs = synapse();
    let bot = hs.user("bot").await?;
    let operator = hs.user("operator").await?;
    let customer = hs.user("customer").await?;
    let spammer = hs.user("spammer").await?;
    let chat = json!({"preset": "trusted_private_chat", "is_direct": true,
                      "invite": [bot.user_id]});
    // Made before the start, so its ID can go into the config.
    let ignored = customer.create_room(chat.clone()).await?;
    let options = format!(
        "ignored_rooms = [\"{ignored}\"]\n\n[sources.help.matrix_dm.access]\ndeny = [\"{}\"]\n",
        spammer.user_id
    );
    let (_sb, _backoffice) = start_helpdesk(Db::Sqlite, &bot, &operator, &[], &options).await?;
    let spam = spammer.create_room(chat.clone()).await?;
    let welcome = customer.create_room(chat).await?;
    wait_in_room(&bot, &welcome, true).await?;
    wait_for("the other invites declined", || async {
        let pending = bot.invites().await.ok()?;
        let joined = bot.joined_rooms().await.ok()?;
        [&spam, &ignored]
            .iter()
            .all(|r| !pending.contains(r) && !joined.contains(r))
            .then_some(())
    })
    .await?;
    Ok(())
}

/// A pretix room for a test: the organiser's, the bot invited (it joins when it first acts
/// there) with power to invite and remove.
async fn pretix_room(organiser: &harness::User, bot: &harness::User) -> Result<String> {
    organiser
        .create_room(json!({"preset": "private_chat", "invite": [bot.user_id],
                            "power_level_content_override": {"users": {&bot.user_id: 100}}}))
        .await
}

/// pretix orders, from a real pretix: a pending order invites nobody; once paid, each
/// attendee with a Matrix ID is; the same webhook four times invites once; an answer that is
/// not a Matrix ID, or none, is reported; a changed answer swaps the attendee; a
/// cancellation removes them.
async fn pretix_orders_invite_attendees(db: Db) -> Result<()> {
    let hs = synapse();
    let px = harness::pretix();
    let bot = hs.user("bot").await?;
    let organiser = hs.user("organiser").await?;
    let [alice, bob, carol, dave] = [
        hs.user("alice").await?,
        hs.user("bob").await?,
        hs.user("carol").await?,
        hs.user("dave").await?,
    ];
    let room = pretix_room(&organiser, &bot).await?;
    let management = pretix_room(&organiser, &bot).await?;
    let secret = format!("hook-secret-{}", harness::suffix());
    let ev = px.event().await?;
    let sb = start(
        db,
        &bot,
        &format!(
            "\n[sources.conf]\nkind = \"pretix\"\npath_secret = \"{secret}\"\n\n\
             [sources.conf.pretix]\nurl = \"{}\"\napi_token = \"{}\"\n\n\
             [[sources.conf.pretix.events]]\norganizer = \"{}\"\nevent = \"{}\"\n\
             rooms = [\"{room}\"]\nmanagement_room = \"{management}\"\n",
            px.base_url, px.token, ev.organizer, ev.slug
        ),
    )
    .await?;
    ev.webhook(px, &format!("{}/hooks/conf/{secret}", sb.base))
        .await?;
    let member = |user: &harness::User| {
        let (organiser, room, id) = (&organiser, room.clone(), user.user_id.clone());
        async move { organiser.membership(&room, &id).await.ok().flatten() }
    };
    let orders_done = |n: usize| {
        let sb = &sb;
        async move {
            let done = actions(sb, "pretix_order", "done").await;
            (done >= n).then_some(done)
        }
    };

    // Pending: pretix calls, Switchboard reads the order, and invites nobody.
    let order = ev.order(px, &[&alice.user_id, &bob.user_id], false).await?;
    let code = order["code"].as_str().context("code")?.to_string();
    wait_for("the pending order read", || orders_done(1)).await?;
    assert_eq!(member(&alice).await, None, "not invited while pending");

    // Paid (payment.confirmed, then paid): both attendees.
    ev.mark(px, &code, "mark_paid").await?;
    for user in [&alice, &bob] {
        wait_for("the invite", || async {
            (member(user).await.as_deref() == Some("invite")).then_some(())
        })
        .await?;
    }
    alice.join(&room).await?;

    // The same webhook four times: accepted once, and no second invite.
    let hook = format!("{}/hooks/conf/{secret}", sb.base);
    let body = json!({"notification_id": 999_999, "organizer": ev.organizer, "event": ev.slug,
                      "code": code, "action": "pretix.event.order.paid"});
    let mut duplicates = 0;
    for _ in 0..4 {
        let answer: Value = sb
            .http()
            .post(&hook)
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        duplicates += usize::from(answer["duplicate"] == true);
    }
    assert_eq!(duplicates, 3);
    let before = orders_done(0).await.unwrap_or(0);
    wait_for("the redelivered order read", || orders_done(before + 1)).await?;
    let invites = |user: &harness::User| {
        let (organiser, room, id) = (&organiser, room.clone(), user.user_id.clone());
        async move {
            organiser
                .timeline(&room)
                .await
                .unwrap_or_default()
                .iter()
                .filter(|e| {
                    e["type"] == "m.room.member"
                        && e["state_key"] == json!(id)
                        && e["content"]["membership"] == "invite"
                })
                .count()
        }
    };
    assert_eq!(invites(&alice).await, 1);
    assert_eq!(invites(&bob).await, 1);

    // Without the secret, or with a wrong one: refused.
    let wrong = sb
        .http()
        .post(format!("{}/hooks/conf/wrong-secret-0000", sb.base))
        .json(&body)
        .send()
        .await?
        .status();
    assert_eq!(wrong.as_u16(), 401);
    let bare = sb
        .http()
        .post(format!("{}/hooks/conf", sb.base))
        .json(&body)
        .send()
        .await?
        .status();
    assert_eq!(bare.as_u16(), 401);

    // A free order (paid at once) with an answer that is no Matrix ID: reported, the other
    // attendee invited.
    let free = ev
        .order(px, &["carol at example dot org", &carol.user_id, ""], true)
        .await?;
    wait_for("carol's invite", || async {
        (member(&carol).await.as_deref() == Some("invite")).then_some(())
    })
    .await?;
    let report = wait_for("the report", || async {
        let said = organiser.messages(&management).await.ok()?;
        said.into_iter()
            .find(|b| b.contains("\"carol at example dot org\" is not a Matrix ID"))
    })
    .await?;
    assert!(
        report.contains(free["code"].as_str().unwrap_or("?")),
        "{report}"
    );
    let free_code = free["code"].as_str().unwrap_or("?").to_string();
    wait_for("the report of the missing answer", || async {
        let said = organiser.messages(&management).await.ok()?;
        said.into_iter().find(|b| {
            b.contains(&format!(
                "Order {free_code} (position 3): gave no Matrix ID"
            ))
        })
    })
    .await?;

    // Bob's answer changes to Dave: Dave is invited, Bob's invite withdrawn.
    let bob_position = order["positions"][1]["id"].as_i64().context("position")?;
    ev.answer(px, bob_position, &dave.user_id).await?;
    wait_for("dave in, bob out", || async {
        let swapped = member(&dave).await.as_deref() == Some("invite")
            && member(&bob).await.as_deref() == Some("leave");
        swapped.then_some(())
    })
    .await?;

    // Canceled: Alice (joined) and Dave are removed, with the reason.
    ev.mark(px, &code, "mark_canceled").await?;
    wait_for("alice and dave removed", || async {
        let gone = member(&alice).await.as_deref() == Some("leave")
            && member(&dave).await.as_deref() == Some("leave");
        gone.then_some(())
    })
    .await?;
    let kick = organiser
        .timeline(&room)
        .await?
        .into_iter()
        .rev()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == json!(alice.user_id))
        .context("alice's membership")?;
    assert_eq!(kick["sender"], json!(bot.user_id), "removed by the bot");
    assert_eq!(
        kick["content"]["reason"],
        "Your ticket for this event is no longer valid."
    );
    assert_eq!(
        member(&carol).await.as_deref(),
        Some("invite"),
        "another order"
    );
    Ok(())
}

/// The config of a test's pretix source: one event, one room, the webhook's URL secret.
fn pretix_source(
    px: &harness::Pretix,
    ev: &harness::PretixEvent,
    room: &str,
    secret: &str,
) -> String {
    format!(
        "\n[sources.conf]\nkind = \"pretix\"\npath_secret = \"{secret}\"\n\n\
         [sources.conf.pretix]\nurl = \"{}\"\napi_token = \"{}\"\npoll_minutes = 0.05\n\n\
         [[sources.conf.pretix.events]]\norganizer = \"{}\"\nevent = \"{}\"\nrooms = [\"{room}\"]\n",
        px.base_url, px.token, ev.organizer, ev.slug
    )
}

/// How many times `user` was invited into `room`, as `reader` sees its timeline.
async fn invites_of(reader: &harness::User, room: &str, user: &str) -> Result<usize> {
    Ok(reader
        .timeline(room)
        .await?
        .iter()
        .filter(|e| {
            e["type"] == "m.room.member"
                && e["state_key"] == json!(user)
                && e["content"]["membership"] == "invite"
        })
        .count())
}

/// Orders whose webhooks pretix gave up on while Switchboard was down are found by asking
/// pretix for the event's changed orders when it is back, through every page (55 orders,
/// pretix pages by 50), and each attendee is invited once.
#[tokio::test]
async fn pretix_catches_up_on_missed_webhooks() -> Result<()> {
    let hs = synapse();
    let px = harness::pretix();
    let bot = hs.user("bot").await?;
    let organiser = hs.user("organiser").await?;
    let alice = hs.user("alice").await?;
    let bob = hs.user("bob").await?;
    let room = pretix_room(&organiser, &bot).await?;
    let secret = format!("hook-secret-{}", harness::suffix());
    let ev = px.event().await?;
    let mut sb = start(Db::Sqlite, &bot, &pretix_source(px, &ev, &room, &secret)).await?;
    ev.webhook(px, &format!("{}/hooks/conf/{secret}", sb.base))
        .await?;
    wait_for("the first look at the event", || async {
        sb.log()
            .contains("watching the event's orders for changes from now on")
            .then_some(())
    })
    .await?;
    sb.kill();
    // pretix's webhooks find nobody listening; it gives up after a few tries.
    for _ in 0..54 {
        ev.order(px, &[&alice.user_id], true).await?;
    }
    ev.order(px, &[&bob.user_id], true).await?;
    sb.spawn().await?;
    for user in [&alice, &bob] {
        wait_membership(&organiser, &room, user, "invite").await?;
    }
    wait_for("all 55 orders read", || async {
        (actions(&sb, "pretix_order", "done").await >= 55).then_some(())
    })
    .await?;
    assert_eq!(invites_of(&organiser, &room, &alice.user_id).await?, 1);
    assert_eq!(invites_of(&organiser, &room, &bob.user_id).await?, 1);
    Ok(())
}

/// A webhook accepted while the homeserver is down, then a restart before the invite could
/// be sent: after the restart the attendee is invited, once.
#[tokio::test]
async fn pretix_restart_between_webhook_and_invite() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("switchboard-pretix-{}", harness::suffix()));
    let hs = harness::Synapse::start(&dir, harness::free_port(), true)?;
    let px = harness::pretix();
    let bot = hs.user("bot").await?;
    let organiser = hs.user("organiser").await?;
    let alice = hs.user("alice").await?;
    let room = pretix_room(&organiser, &bot).await?;
    let secret = format!("hook-secret-{}", harness::suffix());
    let ev = px.event().await?;
    let mut sb = Switchboard::start(Setup {
        synapse: &hs,
        bot: &bot,
        db: Db::Sqlite,
        extra: pretix_source(px, &ev, &room, &secret),
        encryption: false,
        login: None,
    })
    .await?;
    ev.webhook(px, &format!("{}/hooks/conf/{secret}", sb.base))
        .await?;
    wait_for("ready", || async {
        (sb.status_of("/ready").await == 200).then_some(())
    })
    .await?;
    hs.stop();
    ev.order(px, &[&alice.user_id], true).await?;
    // The order is read, and its invite waits for the homeserver.
    wait_for("the invite queued", || async {
        (actions(&sb, "invite", "retry").await > 0).then_some(())
    })
    .await?;
    sb.kill();
    hs.restart()?;
    sb.spawn().await?;
    wait_membership(&organiser, &room, &alice, "invite").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(invites_of(&organiser, &room, &alice.user_id).await?, 1);
    Ok(())
}

/// Organisers map rooms from the chat: `!setroom` with the event's URL, `!status`,
/// `!batchinvite` for the orders paid before (55 of them, over two pages), `!unsetroom`,
/// help for anything else; someone who is not an organiser is refused.
#[tokio::test]
async fn pretix_commands() -> Result<()> {
    let hs = synapse();
    let px = harness::pretix();
    let bot = hs.user("bot").await?;
    let organiser = hs.user("organiser").await?;
    let stranger = hs.user("stranger").await?;
    let alice = hs.user("alice").await?;
    let bob = hs.user("bob").await?;
    let carol = hs.user("carol").await?;
    let ev = px.event().await?;
    // Paid before anyone watched the event.
    for _ in 0..54 {
        ev.order(px, &[&alice.user_id], true).await?;
    }
    ev.order(px, &[&bob.user_id], true).await?;
    let secret = format!("hook-secret-{}", harness::suffix());
    let sb = start(
        Db::Sqlite,
        &bot,
        &format!(
            "\n[sources.conf]\nkind = \"pretix\"\npath_secret = \"{secret}\"\n\n\
             [sources.conf.pretix]\nurl = \"{}\"\napi_token = \"{}\"\npoll_minutes = 0\n\
             organisers = [\"{}\"]\n",
            px.base_url, px.token, organiser.user_id
        ),
    )
    .await?;
    ev.webhook(px, &format!("{}/hooks/conf/{secret}", sb.base))
        .await?;
    let room = organiser
        .create_room(
            json!({"preset": "private_chat", "invite": [bot.user_id, stranger.user_id],
                            "power_level_content_override": {"users": {&bot.user_id: 100}}}),
        )
        .await?;
    stranger.join(&room).await?;
    wait_in_room(&bot, &room, true).await?;
    let answer = |from: &'static str| {
        let (organiser, room) = (&organiser, room.clone());
        async move {
            wait_for(from, || async {
                organiser
                    .messages(&room)
                    .await
                    .ok()?
                    .into_iter()
                    .find(|b| b.contains(from))
            })
            .await
        }
    };
    let event_url = format!("{}/switchboard/{}/", px.base_url, ev.slug);
    stranger
        .send(
            &room,
            json!({"msgtype": "m.text", "body": format!("!setroom {event_url}")}),
        )
        .await?;
    answer("Only the organisers").await?;
    organiser
        .send(
            &room,
            json!({"msgtype": "m.text", "body": format!("!setroom {event_url}")}),
        )
        .await?;
    answer("This room now gets the paid attendees of").await?;
    organiser
        .send(&room, json!({"msgtype": "m.text", "body": "!status"}))
        .await?;
    let status = answer("This room gets the paid attendees of:").await?;
    assert!(
        status.contains(&format!(
            "switchboard/{} (from !setroom): pretix answers",
            ev.slug
        )),
        "{status}"
    );

    // A webhook for an order paid now: the room mapped from the chat counts.
    ev.order(px, &[&carol.user_id], true).await?;
    wait_membership(&organiser, &room, &carol, "invite").await?;
    assert_eq!(organiser.membership(&room, &alice.user_id).await?, None);

    organiser
        .send(
            &room,
            json!({"msgtype": "m.text", "body": format!("!batchinvite switchboard/{}", ev.slug)}),
        )
        .await?;
    let batch = answer("paid orders of").await?;
    assert!(batch.starts_with("56 paid orders"), "{batch}");
    for user in [&alice, &bob] {
        wait_membership(&organiser, &room, user, "invite").await?;
    }
    assert_eq!(invites_of(&organiser, &room, &alice.user_id).await?, 1);
    assert_eq!(invites_of(&organiser, &room, &carol.user_id).await?, 1);

    organiser
        .send(&room, json!({"msgtype": "m.text", "body": "!unsetroom"}))
        .await?;
    answer("This room gets no more attendees").await?;
    organiser
        .send(&room, json!({"msgtype": "m.text", "body": "!what"}))
        .await?;
    answer("!batchinvite <event URL>: invite every paid attendee").await?;
    Ok(())
}

/// pretix OAuth instead of an API token: an order waits until an organiser authorizes
/// Switchboard (`!authorize`, the link, pretix's consent page, the callback page), then its
/// attendee is invited; the fallback of pasting the address pretix sent the browser back to
/// works too; a used link is refused; the token is sealed at rest.
#[tokio::test]
async fn pretix_oauth() -> Result<()> {
    let hs = synapse();
    let px = harness::pretix();
    let bot = hs.user("bot").await?;
    let organiser = hs.user("organiser").await?;
    let alice = hs.user("alice").await?;
    let room = pretix_room(&organiser, &bot).await?;
    let secret = format!("hook-secret-{}", harness::suffix());
    let ev = px.event().await?;
    // The OAuth application needs Switchboard's address, known once it listens: the config
    // is completed then, and Switchboard restarted.
    let mut sb = start(Db::Sqlite, &bot, &format!(
            "\n[sources.conf]\nkind = \"pretix\"\npath_secret = \"{secret}\"\n\n\
             [sources.conf.pretix]\nurl = \"{}\"\npoll_minutes = 0\norganisers = [\"{}\"]\n\n\
             [sources.conf.pretix.oauth]\nclient_id = \"PENDING-ID\"\n\
             client_secret = \"PENDING-SECRET\"\npublic_url = \"http://pending.invalid\"\n\n\
             [[sources.conf.pretix.events]]\norganizer = \"{}\"\nevent = \"{}\"\nrooms = [\"{room}\"]\n",
            px.base_url, organiser.user_id, ev.organizer, ev.slug
        ))
    .await?;
    let (client_id, client_secret) =
        px.oauth_app(&format!("{}/oauth/pretix/conf/callback", sb.base))?;
    let path = sb.dir.join("switchboard.toml");
    let config = std::fs::read_to_string(&path)?
        .replace("PENDING-ID", &client_id)
        .replace("PENDING-SECRET", &client_secret)
        .replace("http://pending.invalid", &sb.base);
    std::fs::write(&path, config)?;
    sb.set_top_level("data_secret", "\"the data secret of the oauth test\"")?;
    sb.kill();
    sb.spawn().await?;
    ev.webhook(px, &format!("{}/hooks/conf/{secret}", sb.base))
        .await?;
    wait_in_room(&bot, &room, true).await?;

    // Paid before anyone authorized Switchboard: it waits.
    ev.order(px, &[&alice.user_id], true).await?;
    let said = |what: &'static str, n: usize| {
        let (organiser, room) = (&organiser, room.clone());
        async move {
            wait_for(what, || async {
                let found: Vec<String> = organiser
                    .messages(&room)
                    .await
                    .ok()?
                    .into_iter()
                    .filter(|b| b.contains(what))
                    .collect();
                (found.len() >= n).then_some(found)
            })
            .await
        }
    };
    let link_of = |answer: &str| {
        answer
            .lines()
            .find(|l| l.starts_with("http"))
            .map(String::from)
            .context("a link")
    };

    organiser
        .send(&room, json!({"msgtype": "m.text", "body": "!authorize"}))
        .await?;
    let answers = said("To let Switchboard read the orders", 1).await?;
    let back = px.oauth_authorize(&link_of(&answers[0])?)?;
    assert!(back.starts_with(&sb.base), "{back}");
    let page = sb.http().get(&back).send().await?;
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await?.contains("can now read the orders"));
    said("pretix is authorized: Switchboard reads the orders with", 1).await?;
    wait_membership(&organiser, &room, &alice, "invite").await?;

    // The fallback: the address pasted into the room.
    organiser
        .send(&room, json!({"msgtype": "m.text", "body": "!authorize"}))
        .await?;
    let answers = said("To let Switchboard read the orders", 2).await?;
    let back = px.oauth_authorize(&link_of(&answers[1])?)?;
    organiser
        .send(
            &room,
            json!({"msgtype": "m.text", "body": format!("!authorize {back}")}),
        )
        .await?;
    said("pretix is authorized: Switchboard reads the orders with", 2).await?;
    let again = sb.http().get(&back).send().await?;
    assert_eq!(again.status().as_u16(), 400, "a link works once");

    let stored = sb
        .sqlite_setting("pretix.conf.oauth")
        .await?
        .context("the token")?;
    assert!(stored.starts_with("sealed:v1:"), "{stored}");
    Ok(())
}

/// How many actions of `kind` ended with `outcome` (`done`, `retry`, `failed`), by
/// Switchboard's metrics; 0 before the first.
async fn actions(sb: &Switchboard, kind: &str, outcome: &str) -> usize {
    let Ok(response) = sb.http().get(format!("{}/metrics", sb.base)).send().await else {
        return 0;
    };
    let text = response.text().await.unwrap_or_default();
    let series = format!("switchboard_actions_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until `user`'s membership of `room`, as `reader` sees it, is `state`.
async fn wait_membership(
    reader: &harness::User,
    room: &str,
    user: &harness::User,
    state: &str,
) -> Result<()> {
    wait_for(
        &format!("{} to be {state} in {room}", user.user_id),
        || async {
            let m = reader.membership(room, &user.user_id).await.ok()??;
            (m == state).then_some(())
        },
    )
    .await
}
