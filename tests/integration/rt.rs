//! The Request Tracker connector, against a real RT 5 with the scrip Switchboard ships: a
//! room per ticket with its people, RT's replies, comments and status changes in the room,
//! room messages back into the ticket as comments, no echo either way.

use anyhow::{Context, Result};
use serde_json::json;

use crate::common::{start, wait_in_room};
use crate::harness::{self, Db, synapse, wait_for};

on_both_databases!(rt_ticket_rooms_both_ways);

/// The source `rt` for `queue`, with a table mapping `agent`, `agent2` and the customer.
fn rt_source(queue: &str, secret: &str, people: &[(&str, &harness::User)]) -> String {
    let rt = harness::rt();
    let mut users = String::new();
    for (who, user) in people {
        users.push_str(&format!("\"{who}\" = \"{}\"\n", user.user_id));
    }
    format!(
        "\n[sources.rt]\nkind = \"request_tracker\"\n\n[sources.rt.signature]\n\
         secret = \"{secret}\"\nheader = \"X-RT-Webhook-Signature\"\n\n\
         [sources.rt.request_tracker]\nurl = \"{url}\"\ntoken = \"{token}\"\n\
         queues = [\"{queue}\"]\ncatch_up_minutes = 0\n\n\
         [sources.rt.request_tracker.room]\nencrypted = false\n\n\
         [sources.rt.request_tracker.people.users]\n{users}",
        url = rt.url,
        token = rt.switchboard_token,
    )
}

/// Waits until the bot has posted a message containing `text` in `room`; all its messages.
async fn wait_text(bot: &harness::User, room: &str, text: &str) -> Result<Vec<String>> {
    wait_for(&format!("`{text}` in the room"), || async {
        let m = bot.messages(room).await.ok()?;
        m.iter().any(|b| b.contains(text)).then_some(m)
    })
    .await
}

/// A ticket created in RT gets a private room named after it, with its owner (admin), its
/// requestor mapped by the table and a Cc nobody maps named; replies and comments appear with
/// their authors; a message in the room becomes a comment by Switchboard's RT user and does
/// not come back; resolving closes and renames the room; a webhook with a bad signature is
/// refused.
async fn rt_ticket_rooms_both_ways(db: Db) -> Result<()> {
    let hs = synapse();
    let rt = harness::rt();
    let bot = hs.user("bot").await?;
    let alice = hs.user("alice").await?;
    let carl = hs.user("carl").await?;
    let bob = hs.user("bob").await?;
    let queue = format!("q{}", harness::suffix());
    let secret = format!("rt-secret-{}", harness::suffix());
    let people = [
        ("agent", &alice),
        ("agent2", &bob),
        ("customer@switchboard.test", &carl),
    ];
    let sb = start(db, &bot, &rt_source(&queue, &secret, &people)).await?;
    rt.queue(&queue, &format!("{}/hooks/rt", sb.base), &secret)?;

    let id = rt
        .create(
            json!({"Queue": queue, "Subject": "VPN down", "Owner": "agent",
            "Requestor": "customer@switchboard.test", "Cc": "stranger@example.org",
            "Content": "Since 9:00 the VPN rejects me.", "ContentType": "text/plain"}),
        )
        .await?;
    let room = sb.wait_room_in("rt", &id.to_string()).await?;
    let opened = wait_text(&bot, &room, "Not in Matrix: stranger@example.org").await?;
    assert!(
        opened.iter().any(
            |m| m == "RT Admin opened the ticket:\nSince 9:00 the VPN rejects me."
                || m.ends_with("opened the ticket:\nSince 9:00 the VPN rejects me.")
        ),
        "{opened:?}"
    );
    let name = bot.state(&room, "m.room.name").await?;
    assert_eq!(
        name.as_ref().map(|n| n["name"].clone()),
        Some(json!(format!("RT #{id}: VPN down")))
    );
    let topic = bot.state(&room, "m.room.topic").await?.unwrap_or_default();
    assert!(
        topic["topic"]
            .as_str()
            .is_some_and(|t| t.contains(&format!("/Ticket/Display.html?id={id}"))),
        "{topic}"
    );
    let power = bot
        .state(&room, "m.room.power_levels")
        .await?
        .unwrap_or_default();
    assert_eq!(
        power["users"][&alice.user_id], 100,
        "the owner is admin: {power}"
    );
    for user in [&alice, &carl] {
        wait_for("the invite", || async {
            (bot.membership(&room, &user.user_id)
                .await
                .ok()
                .flatten()
                .as_deref()
                == Some("invite"))
            .then_some(())
        })
        .await?;
    }

    // RT -> room: a reply and an internal comment, with their authors.
    rt.write(
        &rt.agent_token,
        id,
        "correspond",
        "Restarted the gateway, please retry.",
    )
    .await?;
    rt.write(
        &rt.agent2_token,
        id,
        "comment",
        "The gateway ran out of memory.",
    )
    .await?;
    wait_text(
        &bot,
        &room,
        "Alice Agent replied:\nRestarted the gateway, please retry.",
    )
    .await?;
    wait_text(
        &bot,
        &room,
        "Bob Agent commented (internal):\nThe gateway ran out of memory.",
    )
    .await?;

    // Room -> RT: Carl's message becomes a comment by Switchboard's user.
    carl.join(&room).await?;
    wait_in_room(&carl, &room, true).await?;
    carl.send(
        &room,
        json!({"msgtype": "m.text", "body": "Works now, thanks!"}),
    )
    .await?;
    let written = wait_for("the comment in RT", || async {
        let m = rt.messages(id).await.ok()?;
        m.into_iter().find(|(kind, creator, text)| {
            kind == "Comment" && creator == "switchboard" && text.contains("Works now, thanks!")
        })
    })
    .await?;
    assert!(
        written.2.starts_with("carl"),
        "named after its author: {}",
        written.2
    );

    // A new owner: invited and made admin; the former owner lowered.
    rt.set(id, json!({"Owner": "agent2"})).await?;
    wait_text(&bot, &room, "made Bob Agent the ticket's owner.").await?;
    wait_for("the new owner's power", || async {
        let p = bot
            .state(&room, "m.room.power_levels")
            .await
            .ok()
            .flatten()?;
        (p["users"][&bob.user_id] == 100 && p["users"][&alice.user_id] == 0).then_some(())
    })
    .await
    .with_context(|| sb.log())?;
    assert_eq!(
        bot.membership(&room, &bob.user_id).await?.as_deref(),
        Some("invite")
    );

    // Resolved: a notice, the room renamed. The comment above never came back.
    rt.set(id, json!({"Status": "resolved"})).await?;
    wait_text(&bot, &room, "it is closed").await?;
    wait_for("the closed name", || async {
        let n = bot.state(&room, "m.room.name").await.ok().flatten()?;
        (n["name"] == json!(format!("[resolved] RT #{id}: VPN down"))).then_some(())
    })
    .await?;
    let echoes: Vec<serde_json::Value> = bot
        .timeline(&room)
        .await?
        .into_iter()
        .filter(|e| e["sender"] == json!(bot.user_id))
        .filter(|e| {
            e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains("Works now"))
        })
        .collect();
    assert!(echoes.is_empty(), "a room message came back: {echoes:?}");
    // The transcript: one comment with the room's conversation, its authors and times.
    let transcript = wait_for("the transcript in RT", || async {
        let m = rt.messages(id).await.ok()?;
        m.into_iter().find(|(kind, creator, text)| {
            kind == "Comment"
                && creator == "switchboard"
                && text.starts_with("Transcript of the ticket's Matrix room")
        })
    })
    .await?
    .2;
    for said in [
        &format!("{}: Works now, thanks!", carl.user_id),
        "Switchboard: Alice Agent replied:",
        "it is closed",
    ] {
        assert!(transcript.contains(said), "{said} in {transcript}");
    }
    let comments = rt.messages(id).await?;
    assert_eq!(
        comments
            .iter()
            .filter(|(_, _, t)| t.contains("Works now") && !t.starts_with("Transcript"))
            .count(),
        1,
        "written once: {comments:?}"
    );

    // Webhooks: a wrong signature is refused; a body that names no ticket too.
    let hook = format!("{}/hooks/rt", sb.base);
    let body = json!({"ticket_id": id, "transaction_id": 1});
    let wrong = sb
        .http()
        .post(&hook)
        .header("X-RT-Webhook-Signature", "sha256=00")
        .json(&body)
        .send()
        .await?;
    assert_eq!(wrong.status().as_u16(), 401);
    Ok(())
}

/// Changes made while Switchboard was down (RT's scrip finds nobody and never retries): the
/// catch-up at the next start reads them, and nothing is posted twice.
#[tokio::test]
async fn rt_catches_up_on_missed_webhooks() -> Result<()> {
    let hs = synapse();
    let rt = harness::rt();
    let bot = hs.user("bot").await?;
    let alice = hs.user("alice").await?;
    let queue = format!("q{}", harness::suffix());
    let secret = format!("rt-secret-{}", harness::suffix());
    let mut sb = start(
        Db::Sqlite,
        &bot,
        &rt_source(&queue, &secret, &[("agent", &alice)]),
    )
    .await?;
    rt.queue(&queue, &format!("{}/hooks/rt", sb.base), &secret)?;
    wait_for("the first look at RT", || async {
        sb.log()
            .contains("reading tickets changed from now on")
            .then_some(())
    })
    .await?;
    let id = rt
        .create(
            json!({"Queue": queue, "Subject": "Printer", "Owner": "agent",
            "Requestor": "customer@switchboard.test", "Content": "It jams."}),
        )
        .await?;
    let room = sb.wait_room_in("rt", &id.to_string()).await?;
    wait_text(&bot, &room, "It jams.").await?;

    sb.kill();
    rt.write(
        &rt.agent_token,
        id,
        "correspond",
        "Answered while Switchboard was down.",
    )
    .await?;
    let missed = rt
        .create(
            json!({"Queue": queue, "Subject": "Scanner", "Owner": "agent",
            "Requestor": "customer@switchboard.test", "Content": "It scans nothing."}),
        )
        .await?;
    sb.spawn().await?;
    let all = wait_text(&bot, &room, "Answered while Switchboard was down.").await?;
    let other = sb.wait_room_in("rt", &missed.to_string()).await?;
    wait_text(&bot, &other, "It scans nothing.").await?;
    assert_eq!(
        all.iter().filter(|m| m.contains("It jams.")).count(),
        1,
        "nothing posted twice: {all:?}"
    );
    Ok(())
}
