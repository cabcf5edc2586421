//! The Request Tracker connector, against a real RT 5 with the scrip Switchboard ships: a
//! room per ticket with its people, RT's replies, comments and status changes in the room,
//! room messages back into the ticket as comments, no echo either way.

use anyhow::{Context, Result};
use serde_json::json;

use crate::common::{start, wait_in_room, wait_text};
use crate::harness::{self, Db, synapse, wait_for};

on_both_databases!(
    rt_ticket_rooms_both_ways,
    rt_merged_ticket_points_to_the_surviving_room,
    rt_closed_rooms_turn_read_only_then_empty
);

/// The source `rt` for `queue`, with a table mapping `agent`, `agent2` and the customer.
fn rt_source(queue: &str, secret: &str, people: &[(&str, &harness::User)]) -> String {
    rt_source_as("rt", "", queue, secret, people)
}

/// `rt_source` with another ID and lines of its own (`top`) in `[sources.<id>]`.
fn rt_source_as(
    id: &str,
    top: &str,
    queue: &str,
    secret: &str,
    people: &[(&str, &harness::User)],
) -> String {
    let rt = harness::rt();
    let mut users = String::new();
    for (who, user) in people {
        users.push_str(&format!("\"{who}\" = \"{}\"\n", user.user_id));
    }
    format!(
        "\n[sources.{id}]\nkind = \"request_tracker\"\n{top}\n[sources.{id}.signature]\n\
         secret = \"{secret}\"\nheader = \"X-RT-Webhook-Signature\"\n\n\
         [sources.{id}.request_tracker]\nurl = \"{url}\"\ntoken = \"{token}\"\n\
         queues = [\"{queue}\"]\ncatch_up_minutes = 0\n\n\
         [sources.{id}.request_tracker.room]\nencrypted = false\n\n\
         [sources.{id}.request_tracker.people.users]\n{users}",
        url = rt.url,
        token = rt.switchboard_token,
    )
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

    // `!ticket reply`: refused to the customer (power 0); the owner (100) switches the room,
    // and what is said next is a reply. Commands never reach the ticket.
    carl.send(&room, json!({"msgtype": "m.text", "body": "!ticket reply"}))
        .await?;
    wait_text(
        &bot,
        &room,
        "Only the ticket's owner and moderators can switch",
    )
    .await?;
    alice.join(&room).await?;
    wait_in_room(&alice, &room, true).await?;
    alice
        .send(&room, json!({"msgtype": "m.text", "body": "!ticket reply"}))
        .await?;
    wait_text(
        &bot,
        &room,
        "switched: messages here now go to the ticket as replies the customer sees.",
    )
    .await?;
    alice
        .send(
            &room,
            json!({"msgtype": "m.text", "body": "Please also clear the VPN cache."}),
        )
        .await?;
    wait_for("the reply in RT", || async {
        let m = rt.messages(id).await.ok()?;
        m.into_iter().find(|(kind, creator, text)| {
            kind == "Correspond" && creator == "switchboard" && text.contains("VPN cache")
        })
    })
    .await?;
    let all = rt.messages(id).await?;
    assert!(
        all.iter().all(|(_, _, text)| !text.contains("!ticket")),
        "a command reached the ticket: {all:?}"
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

/// Which tickets get a room: those of one source whose custom field `Chat` is `yes` and
/// whose priority is 40 or 50 (a ticket that comes to match later gets its room then, with
/// its history); those of another only when the "open chat" link asks for their room.
#[tokio::test]
async fn rt_rooms_for_selected_tickets_and_on_demand() -> Result<()> {
    let hs = synapse();
    let rt = harness::rt();
    let bot = hs.user("bot").await?;
    let alice = hs.user("alice").await?;
    let (picked, asked) = (
        format!("q{}", harness::suffix()),
        format!("q{}", harness::suffix()),
    );
    let secret = format!("rt-secret-{}", harness::suffix());
    let people = [("agent", &alice)];
    let config = format!(
        "{}\n[sources.rt.request_tracker.select.fields]\n\"fields.Chat\" = [\"yes\"]\n\
         priority = [\"40\", \"50\"]\n{}\n[sources.rtd.request_tracker.select]\n\
         on_demand = true\n",
        rt_source(&picked, &secret, &people),
        rt_source_as("rtd", "link_create = true\n", &asked, &secret, &people),
    );
    let sb = start(Db::Sqlite, &bot, &config).await?;
    rt.queue(&picked, &format!("{}/hooks/rt", sb.base), &secret)?;
    rt.queue(&asked, &format!("{}/hooks/rtd", sb.base), &secret)?;

    let ticket = |subject: &str, priority: u32, chat: Option<&str>| {
        let mut t = json!({"Queue": picked, "Subject": subject, "Owner": "agent",
                           "Priority": priority, "Content": format!("{subject}, please.")});
        if let Some(chat) = chat {
            t["CustomFields"] = json!({ "Chat": chat });
        }
        t
    };
    let later = rt.create(ticket("Later", 40, None)).await?;
    let low = rt.create(ticket("Low", 10, Some("yes"))).await?;
    let chosen = rt.create(ticket("Chosen", 50, Some("Yes"))).await?;
    let room = sb.wait_room_in("rt", &chosen.to_string()).await?;
    wait_text(&bot, &room, "Chosen, please.").await?;
    for (id, why) in [
        (later, "skipped: its fields.Chat is not yes"),
        (low, "skipped: its priority is not 40 or 50"),
    ] {
        wait_for(why, || async {
            let results = sb.sqlite_results("rt", &id.to_string()).await.ok()?;
            results.iter().any(|r| r == why).then_some(())
        })
        .await?;
        assert_eq!(sb.room_in("rt", &id.to_string()).await?, None);
    }
    // The field set later: the room comes, with the ticket's history.
    rt.set(later, json!({"CustomFields": {"Chat": "yes"}}))
        .await?;
    let room = sb.wait_room_in("rt", &later.to_string()).await?;
    let said = wait_text(&bot, &room, "Later, please.").await?;
    assert_eq!(
        said.iter().filter(|m| m.contains("Later, please.")).count(),
        1,
        "{said:?}"
    );

    // On demand: no room until the link asks for it.
    let id = rt
        .create(
            json!({"Queue": asked, "Subject": "Call me", "Owner": "agent",
                       "Content": "Chat about it?"}),
        )
        .await?;
    let key = id.to_string();
    wait_for("the ticket read", || async {
        let results = sb.sqlite_results("rtd", &key).await.ok()?;
        results
            .iter()
            .any(|r| r == "skipped: its room is made on demand only")
            .then_some(())
    })
    .await?;
    assert_eq!(sb.sqlite_room("rtd", &key).await?, None);
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let link = format!("{}/link/rtd/{id}", sb.base);
    let room = loop {
        let r = no_redirect.get(&link).send().await?;
        match r.status().as_u16() {
            302 => break r.headers()["location"].to_str()?.to_string(),
            504 => continue,
            status => anyhow::bail!("the link answered {status}: {}", r.text().await?),
        }
    };
    let room = room.trim_start_matches("https://matrix.to/#/").to_string();
    assert_eq!(sb.room_in("rtd", &key).await?, Some(room.clone()));
    wait_text(&bot, &room, "Chat about it?").await?;
    let name = bot.state(&room, "m.room.name").await?.unwrap_or_default();
    assert_eq!(name["name"], json!(format!("RT #{id}: Call me")));
    Ok(())
}

/// A ticket merged into another: its room is told, with a link to the surviving ticket's
/// room, and hears nothing of it afterwards.
async fn rt_merged_ticket_points_to_the_surviving_room(db: Db) -> Result<()> {
    let hs = synapse();
    let rt = harness::rt();
    let bot = hs.user("bot").await?;
    let alice = hs.user("alice").await?;
    let queue = format!("q{}", harness::suffix());
    let secret = format!("rt-secret-{}", harness::suffix());
    let sb = start(db, &bot, &rt_source(&queue, &secret, &[("agent", &alice)])).await?;
    rt.queue(&queue, &format!("{}/hooks/rt", sb.base), &secret)?;
    let mut rooms = Vec::new();
    for subject in ["Mail bounces", "Mail bounces again"] {
        let id = rt
            .create(json!({"Queue": queue, "Subject": subject, "Owner": "agent",
                           "Content": format!("{subject}.")}))
            .await?;
        let room = sb.wait_room_in("rt", &id.to_string()).await?;
        wait_text(&bot, &room, &format!("{subject}.")).await?;
        rooms.push((id, room));
    }
    let [(merged, merged_room), (surviving, surviving_room)] = &rooms[..] else {
        anyhow::bail!("two tickets");
    };
    rt.merge(*merged, *surviving)?;
    wait_text(
        &bot,
        merged_room,
        &format!(
            "The ticket was merged into RT #{surviving}: the conversation goes on there in its \
             room, https://matrix.to/#/{surviving_room}."
        ),
    )
    .await
    .with_context(|| sb.log())?;
    rt.write(
        &rt.agent_token,
        *surviving,
        "correspond",
        "Fixed the MX record.",
    )
    .await?;
    wait_text(&bot, surviving_room, "Fixed the MX record.").await?;
    let merged_said = bot.messages(merged_room).await?;
    assert!(
        merged_said.iter().all(|m| !m.contains("MX record")),
        "the merged ticket's room heard the surviving one: {merged_said:?}"
    );
    assert_eq!(
        merged_said
            .iter()
            .filter(|m| m.contains("was merged into"))
            .count(),
        1,
        "{merged_said:?}"
    );
    Ok(())
}

/// Each means of finding a Matrix ID, in the default order: the owner by the Matrix ID in
/// his RT user record (a user custom field); a requestor by e-mail through the homeserver
/// (the bot is a server admin); another through an identity server, hashed; someone none
/// finds is named.
#[tokio::test]
async fn rt_people_found_by_field_homeserver_and_identity_server() -> Result<()> {
    use crate::identity;
    let hs = synapse();
    let rt = harness::rt();
    let bot = hs.admin("bot").await?;
    let bob = hs.user("bob").await?;
    let hera = hs.user("hera").await?;
    let ida = hs.user("ida").await?;
    let tag = harness::suffix();
    let (by_hs, by_is, nobody) = (
        format!("hera-{tag}@example.org"),
        format!("ida-{tag}@example.org"),
        format!("nobody-{tag}@example.org"),
    );
    bot.set_email(&hera.user_id, &by_hs).await?;
    let state = identity::Shared::default();
    identity::lock(&state)
        .bindings
        .insert(by_is.clone(), ida.user_id.clone());
    let is = identity::start(state.clone(), &hs.base_url).await?;
    rt.call(
        &rt.root_token,
        reqwest::Method::PUT,
        "/user/agent2",
        Some(json!({"CustomFields": {"Matrix": bob.user_id}})),
    )
    .await?;

    let queue = format!("q{}", harness::suffix());
    let secret = format!("rt-secret-{}", harness::suffix());
    let config = format!(
        "{}\n[sources.rt.request_tracker.people]\nfield = \"Matrix\"\nhomeserver = true\n\
         identity_server = \"{is}\"\n",
        rt_source(&queue, &secret, &[])
    )
    .replace("\n[sources.rt.request_tracker.people.users]\n", "\n");
    let sb = start(Db::Sqlite, &bot, &config).await?;
    rt.queue(&queue, &format!("{}/hooks/rt", sb.base), &secret)?;
    let id = rt
        .create(
            json!({"Queue": queue, "Subject": "Who is who", "Owner": "agent2",
                       "Requestor": [by_hs, by_is, nobody], "Content": "Find us."}),
        )
        .await?;
    let room = sb.wait_room_in("rt", &id.to_string()).await?;
    let said = wait_text(&bot, &room, "Not in Matrix:")
        .await
        .with_context(|| sb.log())?;
    let unmapped: Vec<&String> = said
        .iter()
        .filter(|m| m.starts_with("Not in Matrix:"))
        .collect();
    assert_eq!(unmapped, [&format!("Not in Matrix: {nobody}")], "{said:?}");
    for user in [&bob, &hera, &ida] {
        wait_for("the invite", || async {
            (bot.membership(&room, &user.user_id)
                .await
                .ok()
                .flatten()
                .as_deref()
                == Some("invite"))
            .then_some(())
        })
        .await
        .with_context(|| format!("{} invited; {}", user.user_id, sb.log()))?;
    }
    let power = bot
        .state(&room, "m.room.power_levels")
        .await?
        .unwrap_or_default();
    assert_eq!(power["users"][&bob.user_id], 100, "the owner: {power}");
    let s = identity::lock(&state);
    assert_eq!(s.wrong, Vec::<String>::new(), "requests the server refused");
    // Only hashes left Switchboard: the addresses the homeserver did not know.
    let asked: Vec<&String> = s.lookups.iter().flat_map(|(a, _)| a).collect();
    assert!(asked.contains(&&identity::hash(&by_is)), "{asked:?}");
    assert!(asked.contains(&&identity::hash(&nobody)), "{asked:?}");
    assert!(!asked.contains(&&identity::hash(&by_hs)), "{asked:?}");
    assert!(s.lookups.iter().all(|(_, algorithm)| algorithm == "sha256"));
    Ok(())
}

/// Some time after the close (seconds here, days in use), the room becomes read-only for all
/// but its admins, then everyone leaves it; reopening the ticket makes it writable again
/// and invites its people back.
async fn rt_closed_rooms_turn_read_only_then_empty(db: Db) -> Result<()> {
    let hs = synapse();
    let rt = harness::rt();
    let bot = hs.user("bot").await?;
    let alice = hs.user("alice").await?;
    let carl = hs.user("carl").await?;
    let queue = format!("q{}", harness::suffix());
    let secret = format!("rt-secret-{}", harness::suffix());
    let people = [("agent", &alice), ("customer@switchboard.test", &carl)];
    let config = rt_source(&queue, &secret, &people).replace(
        "[sources.rt.request_tracker.room]\nencrypted = false\n",
        "[sources.rt.request_tracker.room]\nencrypted = false\n\
         read_only_after_days = 0.00005\nempty_after_days = 0.00015\n",
    );
    let sb = start(db, &bot, &config).await?;
    rt.queue(&queue, &format!("{}/hooks/rt", sb.base), &secret)?;
    let id = rt
        .create(
            json!({"Queue": queue, "Subject": "Old laptop", "Owner": "agent",
                       "Requestor": "customer@switchboard.test", "Content": "Please recycle."}),
        )
        .await?;
    let room = sb.wait_room_in("rt", &id.to_string()).await?;
    for user in [&alice, &carl] {
        wait_for("the invite", || async {
            (bot.membership(&room, &user.user_id)
                .await
                .ok()
                .flatten()?
                .as_str()
                == "invite")
                .then_some(())
        })
        .await?;
        user.join(&room).await?;
        wait_in_room(user, &room, true).await?;
    }
    let events_default = |want: i64| {
        let bot = &bot;
        let room = &room;
        async move {
            wait_for(&format!("events_default {want}"), || async {
                let p = bot
                    .state(room, "m.room.power_levels")
                    .await
                    .ok()
                    .flatten()?;
                (p["events_default"] == want).then_some(())
            })
            .await
        }
    };
    rt.set(id, json!({"Status": "resolved"})).await?;
    wait_text(&bot, &room, "it is closed").await?;
    events_default(100).await.with_context(|| sb.log())?;
    wait_text(&bot, &room, "only the room's admins can write here now").await?;
    for user in [&alice, &carl] {
        wait_for("everyone removed", || async {
            (bot.membership(&room, &user.user_id)
                .await
                .ok()
                .flatten()?
                .as_str()
                == "leave")
                .then_some(())
        })
        .await
        .with_context(|| sb.log())?;
    }
    rt.set(id, json!({"Status": "open"})).await?;
    wait_text(&bot, &room, "opened the ticket again").await?;
    events_default(0).await.with_context(|| sb.log())?;
    for user in [&alice, &carl] {
        wait_for("invited back", || async {
            (bot.membership(&room, &user.user_id)
                .await
                .ok()
                .flatten()?
                .as_str()
                == "invite")
                .then_some(())
        })
        .await
        .with_context(|| sb.log())?;
    }
    Ok(())
}

/// The default: an encrypted room. Its owner's E2EE client reads RT's messages there (the
/// server sees only ciphertext), and what she writes, encrypted, reaches the ticket.
#[tokio::test]
async fn rt_encrypted_rooms_both_ways() -> Result<()> {
    use matrix_sdk::config::SyncSettings;
    use matrix_sdk::room::MessagesOptions;
    use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
    use std::time::Duration;

    let hs = synapse();
    let rt = harness::rt();
    let bot = hs.user("bot").await?;
    let alice = hs.user("alice").await?;
    // Alice's client exists (and has published its keys) before the ticket is opened.
    let store = std::env::temp_dir().join(format!("switchboard-alice-{}", harness::suffix()));
    let client = matrix_sdk::Client::builder()
        .homeserver_url(&hs.base_url)
        .sqlite_store(&store, None)
        .build()
        .await?;
    client
        .matrix_auth()
        .login_username(&alice.user_id, &alice.password)
        .send()
        .await?;
    client.sync_once(SyncSettings::default()).await?;

    let queue = format!("q{}", harness::suffix());
    let secret = format!("rt-secret-{}", harness::suffix());
    let config = rt_source(&queue, &secret, &[("agent", &alice)])
        .replace("encrypted = false\n", "encrypted = true\n");
    let sb = harness::Switchboard::start(harness::Setup {
        synapse: hs,
        bot: &bot,
        db: Db::Sqlite,
        extra: config,
        encryption: true,
        login: None,
    })
    .await?;
    rt.queue(&queue, &format!("{}/hooks/rt", sb.base), &secret)?;
    let id = rt
        .create(
            json!({"Queue": queue, "Subject": "Secret", "Owner": "agent",
                       "Content": "The vault code is 1234."}),
        )
        .await?;
    let room_id = sb.wait_room_in("rt", &id.to_string()).await?;
    let enc = bot.state(&room_id, "m.room.encryption").await?;
    assert_eq!(
        enc.map(|e| e["algorithm"].clone()),
        Some(json!("m.megolm.v1.aes-sha2"))
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
            let v: serde_json::Value = e.raw().deserialize_as().ok()?;
            let body = v["content"]["body"].as_str()?;
            (v["type"] == "m.room.message" && body.contains("vault")).then(|| body.to_string())
        })
    })
    .await?;
    assert!(body.ends_with("The vault code is 1234."), "{body}");
    room.send(RoomMessageEventContent::text_plain("Changed it to 5678."))
        .await?;
    wait_for("the comment in RT", || async {
        let m = rt.messages(id).await.ok()?;
        m.into_iter().find(|(kind, creator, text)| {
            kind == "Comment" && creator == "switchboard" && text.contains("Changed it to 5678.")
        })
    })
    .await
    .with_context(|| sb.log())?;
    let timeline = bot.timeline(room_id.as_str()).await?;
    let plain: Vec<&serde_json::Value> = timeline
        .iter()
        .filter(|e| e.to_string().contains("1234") || e.to_string().contains("5678"))
        .collect();
    assert!(plain.is_empty(), "plaintext on the server: {plain:?}");
    let _ = std::fs::remove_dir_all(&store);
    Ok(())
}

/// Files both ways: a file attached in RT is posted into the room as a file; a file sent in
/// the room is attached to the comment it becomes.
#[tokio::test]
async fn rt_files_both_ways() -> Result<()> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let hs = synapse();
    let rt = harness::rt();
    let bot = hs.user("bot").await?;
    let carl = hs.user("carl").await?;
    let queue = format!("q{}", harness::suffix());
    let secret = format!("rt-secret-{}", harness::suffix());
    let people = [("customer@switchboard.test", &carl)];
    let sb = start(Db::Sqlite, &bot, &rt_source(&queue, &secret, &people)).await?;
    rt.queue(&queue, &format!("{}/hooks/rt", sb.base), &secret)?;
    let id = rt
        .create(
            json!({"Queue": queue, "Subject": "Scanner", "Requestor": "customer@switchboard.test",
            "Content": "The error log is attached.", "ContentType": "text/plain",
            "Attachments": [{"FileName": "error.log", "FileType": "text/plain",
                             "FileContent": b64.encode("E042 paper jam\n")}]}),
        )
        .await?;
    let room = sb.wait_room_in("rt", &id.to_string()).await?;
    let said = wait_text(&bot, &room, "📎 error.log (15 bytes, below)").await?;
    assert!(
        said.iter()
            .any(|m| m.contains("The error log is attached.")),
        "{said:?}"
    );
    let file = wait_for("the file in the room", || async {
        let t = bot.timeline(&room).await.ok()?;
        t.into_iter()
            .find(|e| e["content"]["msgtype"] == "m.file" && e["content"]["body"] == "error.log")
    })
    .await
    .with_context(|| sb.log())?;
    assert_eq!(file["content"]["info"]["mimetype"], "text/plain");
    let url = file["content"]["url"].as_str().context("url")?;
    assert_eq!(bot.download(url).await?, b"E042 paper jam\n");

    // Room -> RT: Carl's file, attached to the comment.
    carl.join(&room).await?;
    wait_in_room(&carl, &room, true).await?;
    let mxc = carl
        .upload(b"firmware 2.1\n".to_vec(), "text/plain")
        .await?;
    carl.send(
        &room,
        json!({"msgtype": "m.file", "body": "version.txt", "url": mxc,
               "info": {"mimetype": "text/plain", "size": 13}}),
    )
    .await?;
    let transaction = wait_for("the comment with the file", || async {
        let history = rt
            .call(
                &rt.root_token,
                reqwest::Method::GET,
                &format!("/ticket/{id}/history?fields=Type,Creator"),
                None,
            )
            .await
            .ok()?;
        history["items"].as_array()?.iter().find_map(|t| {
            (t["Type"] == "Comment" && t["Creator"]["id"] == "switchboard").then(|| {
                t["id"]
                    .as_str()
                    .map(String::from)
                    .or(t["id"].as_u64().map(|i| i.to_string()))
            })?
        })
    })
    .await
    .with_context(|| sb.log())?;
    let parts = rt
        .call(
            &rt.root_token,
            reqwest::Method::GET,
            &format!("/transaction/{transaction}/attachments?fields=Filename"),
            None,
        )
        .await?;
    let attachment = parts["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["Filename"] == "version.txt")
        .with_context(|| format!("version.txt in {parts}"))?;
    let a = rt
        .call(
            &rt.root_token,
            reqwest::Method::GET,
            &format!(
                "/attachment/{}",
                attachment["id"].as_str().unwrap_or_default()
            ),
            None,
        )
        .await?;
    let content: String = a["Content"]
        .as_str()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(b64.decode(content)?, b"firmware 2.1\n");
    Ok(())
}
