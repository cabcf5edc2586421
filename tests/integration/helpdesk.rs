//! The Matrix DM helpdesk connector, and Honoroit's drop-in: customers' direct chats relayed
//! to threads in a backoffice room and back, with commands, restarts, outages and encryption.

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use crate::common::{start, wait_in_room};
use crate::harness::{self, Db, Setup, Switchboard, synapse, wait_for};

on_both_databases!(
    helpdesk_relays_both_ways,
    helpdesk_commands,
    helpdesk_start_and_config,
    helpdesk_idle_close,
    helpdesk_relays_media_reactions_edits_redactions,
    honoroit_drop_in,
    helpdesk_outage_longer_than_a_sync,
);

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

/// The config the tests check (as `check-config` reads it).
const MINIMAL: &str = r#"
[matrix]
homeserver = "http://127.0.0.1:8008"
user = "@bot:localhost"
password = "pw"

[sources.tickets]
kind = "webhook"
"#;

#[test]
fn helpdesk_sources_are_checked_with_lines() {
    let ok = format!(
        "{MINIMAL}\n[sources.help]\nkind = \"matrix_dm\"\n[sources.help.matrix_dm]\nbackoffice_room = \"!ops\"\n"
    );
    let l = switchboard::config::parse(&ok).expect("valid");
    assert_eq!(l.config.sources["help"].kind, "matrix_dm");

    let text = format!(
        "{MINIMAL}\n[sources.help]\nkind = \"matrix_dm\"\n\n\
         [sources.help.matrix_dm]\nbackoffice_room = \"#ops:example.org\"\n\
         admins = [\"alice\"]\n\n[sources.desk]\nkind = \"matrix_dm\"\n"
    );
    let errs = switchboard::config::parse(&text).expect_err("invalid");
    let keys: Vec<_> = errs.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert!(
        keys.contains(&("sources.help.matrix_dm.backoffice_room", Some(14))),
        "{errs:?}"
    );
    assert!(
        keys.contains(&("sources.help.matrix_dm.admins", Some(15))),
        "{errs:?}"
    );
    assert!(
        keys.contains(&("sources.desk.matrix_dm", Some(17))),
        "{errs:?}"
    );
    assert!(keys.contains(&("sources.help.kind", Some(11))), "{errs:?}");
}

/// A helpdesk section on a source of another kind is named with its line.
#[test]
fn a_section_of_another_kind_is_named() {
    let text = format!(
        "{MINIMAL}\n[sources.other]\nkind = \"matrix_dm\"\n[sources.other.webhook]\n\
         [sources.other.matrix_dm]\nbackoffice_room = \"!ops\"\n"
    );
    let errs = switchboard::config::parse(&text).expect_err("invalid");
    assert!(
        errs.iter()
            .any(|e| e.key == "sources.other.webhook" && e.line == Some(12)),
        "{errs:?}"
    );
}

fn honoroit_vars(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (format!("HONOROIT_{k}"), v.to_string()))
        .collect()
}

/// The `HONOROIT_*` variables make a helpdesk config through the same checks as a file.
#[test]
fn honoroit_variables_make_a_helpdesk() {
    use switchboard::config::MatrixLogin;
    let v = honoroit_vars(&[
        ("HOMESERVER", "https://matrix.example.org"),
        ("LOGIN", "honoroit"),
        ("PASSWORD", "pa\"ss ${word}"),
        ("ROOMID", "!backoffice:example.org"),
        ("AUTH_METRICS_LOGIN", "prom"),
        ("METRICS_PASSWORD", "scrape"),
        ("METRICS_IPS", "10.0.0.1 192.168.0.0/16 ::1"),
        ("CACHESIZE", "2000"),
    ]);
    let made = switchboard::env_config::load(&v)
        .expect("the variables are read")
        .expect("a valid config");
    assert_eq!(made.name, "HONOROIT_* variables");
    let cfg = &made.loaded.config;
    assert_eq!(cfg.http.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(cfg.matrix.user, "honoroit");
    let source = &cfg.sources[switchboard_matrix_dm::honoroit::SOURCE_ID];
    assert_eq!(source.kind, "matrix_dm");
    assert_eq!(
        source.sections["matrix_dm"]["backoffice_room"],
        "!backoffice:example.org"
    );
    assert!(
        made.loaded
            .connectors
            .0
            .contains_key(switchboard_matrix_dm::honoroit::SOURCE_ID)
    );
    assert!(matches!(
        &made.loaded.secrets.matrix_login,
        Some(MatrixLogin::Password(p)) if p.expose() == "pa\"ss ${word}"
    ));
    assert_eq!(cfg.metrics.username.as_deref(), Some("prom"));
    assert!(
        made.warnings
            .iter()
            .any(|w| w.starts_with("HONOROIT_CACHESIZE"))
    );
    assert!(switchboard::env_config::load(&Default::default()).is_none());
}

/// A problem the config check finds is named by the variable it came from.
#[test]
fn honoroit_config_problems_are_mapped_back() {
    let err = switchboard::env_config::load(&honoroit_vars(&[
        ("HOMESERVER", "https://matrix.example.org"),
        ("LOGIN", "honoroit"),
        ("TOKEN", "t"),
        ("ROOMID", "#alias:example.org"),
    ]))
    .expect("the variables are read")
    .expect_err("an alias is not a room ID");
    let keys: Vec<&str> = err.errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["HONOROIT_ROOMID"], "{err}");
}

/// `HONOROIT_REDMINE_*` add a Redmine source that follows the helpdesk; its problems are
/// named by their variables.
#[test]
fn honoroit_redmine_variables_make_a_redmine_source() {
    let mut v = honoroit_vars(&[
        ("HOMESERVER", "https://matrix.example.org"),
        ("LOGIN", "honoroit"),
        ("TOKEN", "t"),
        ("ROOMID", "!backoffice:example.org"),
        ("REDMINE_HOST", "https://redmine.example.org"),
        ("REDMINE_APIKEY", "key"),
        ("REDMINE_PROJECT", "helpdesk"),
        ("REDMINE_TRACKERID", "3"),
        ("REDMINE_NEWSTATUSID", "1"),
        ("REDMINE_INPROGRESSSTATUSID", "2"),
        ("REDMINE_DONESTATUSID", "5"),
    ]);
    let made = switchboard::env_config::load(&v)
        .expect("the variables are read")
        .expect("a valid config");
    let redmine = &made.loaded.config.sources[switchboard_matrix_dm::honoroit::REDMINE_SOURCE_ID];
    assert_eq!(redmine.kind, "redmine");
    assert_eq!(redmine.sections["redmine"]["helpdesk"], "honoroit");
    assert_eq!(redmine.sections["redmine"]["statuses"]["done"], 5);
    let followers = made.loaded.connectors.followers(&made.loaded.config);
    assert_eq!(followers["honoroit"], ["redmine"]);
    assert!(made.warnings.is_empty(), "{:?}", made.warnings);

    v.insert("HONOROIT_REDMINE_HOST".into(), "redmine.example.org".into());
    let err = switchboard::env_config::load(&v)
        .expect("the variables are read")
        .expect_err("no scheme");
    let keys: Vec<&str> = err.errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["HONOROIT_REDMINE_HOST"], "{err}");
}
