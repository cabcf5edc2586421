//! The generic webhook connector: each ticket gets one room and each message arrives once, in
//! order, through redeliveries, concurrency, kills, outages, bad requests, links and E2EE.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};

use crate::common::{start, ticket, wait_messages};
use crate::harness::{self, Db, Setup, Switchboard, synapse, wait_for};

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
    one_room_per_ticket_whatever_the_homeserver_answers,
    long_messages_arrive_whole,
);

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
    // `status` counts it, and says so by its exit code.
    let (code, status) = sb.cli(&["status"])?;
    assert_eq!(code, 1, "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("tickets\twebhook\t0\t0\t1\t0\t")),
        "{status}"
    );
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
