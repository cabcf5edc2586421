//! One bot, several connectors: a helpdesk and pretix organisers' commands on the same
//! homeserver account, each hearing only the rooms that are its own.

use anyhow::Result;
use serde_json::{Value, json};

use crate::common::{start, wait_in_room};
use crate::harness::{self, Db, synapse, wait_for};

/// The organiser's room (three members) belongs to pretix, which took the invite: its
/// commands are answered there, and the helpdesk neither treats it as a customer's chat
/// nor leaves it as a group. A customer's direct chat belongs to the helpdesk: a thread
/// opens in the backoffice room and the operator's answer reaches the customer.
#[tokio::test]
async fn a_helpdesk_and_pretix_commands_share_one_bot() -> Result<()> {
    let hs = synapse();
    let bot = hs.user("bot").await?;
    let operator = hs.user("operator").await?;
    let organiser = hs.user("organiser").await?;
    let stranger = hs.user("stranger").await?;
    let customer = hs.user("customer").await?;
    let backoffice = operator
        .create_room(json!({"preset": "private_chat", "invite": [bot.user_id]}))
        .await?;
    let secret = format!("hook-secret-{}", harness::suffix());
    let sb = start(
        Db::Sqlite,
        &bot,
        &format!(
            "\n[sources.conf]\nkind = \"pretix\"\npath_secret = \"{secret}\"\n\n\
             [sources.conf.pretix]\nurl = \"http://127.0.0.1:9\"\napi_token = \"t\"\n\
             poll_minutes = 0\norganisers = [\"{}\"]\n\n\
             [sources.help]\nkind = \"matrix_dm\"\n\n[sources.help.matrix_dm]\n\
             backoffice_room = \"{backoffice}\"\n",
            organiser.user_id
        ),
    )
    .await?;
    wait_in_room(&bot, &backoffice, true).await?;

    // pretix's room: the organiser, a stranger and the bot.
    let room = organiser
        .create_room(json!({"preset": "private_chat",
                            "invite": [bot.user_id, stranger.user_id]}))
        .await?;
    stranger.join(&room).await?;
    wait_in_room(&bot, &room, true).await?;
    organiser
        .send(&room, json!({"msgtype": "m.text", "body": "!help"}))
        .await?;
    let help = wait_for("pretix's help in the organiser's room", || async {
        organiser
            .messages(&room)
            .await
            .ok()?
            .into_iter()
            .find(|b| b.starts_with("Commands (organisers only)"))
    })
    .await?;
    assert!(help.contains("!setroom"), "{help}");

    // The helpdesk's chat.
    let dm = customer
        .create_room(json!({"preset": "trusted_private_chat", "is_direct": true,
                            "invite": [bot.user_id]}))
        .await?;
    customer
        .send(
            &dm,
            json!({"msgtype": "m.text", "body": "Where is my ticket?"}),
        )
        .await?;
    wait_in_room(&bot, &dm, true).await?;
    let root = wait_for("the request's thread root", || async {
        operator
            .timeline(&backoffice)
            .await
            .ok()?
            .into_iter()
            .find(|e| {
                e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.starts_with("[OPEN] "))
            })
    })
    .await?;
    let root = root["event_id"].as_str().unwrap_or_default().to_string();
    operator
        .send(
            &backoffice,
            json!({"msgtype": "m.text", "body": "It is on its way",
                   "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
        )
        .await?;
    wait_for("the operator's answer in the customer's chat", || async {
        customer
            .messages(&dm)
            .await
            .ok()?
            .into_iter()
            .find(|b| b == "It is on its way")
    })
    .await?;

    // The organiser's room was never taken for a customer's: the bot is still in it, it
    // said nothing there but the answer, and no request was opened for it.
    organiser
        .send(&room, json!({"msgtype": "m.text", "body": "thanks"}))
        .await?;
    organiser
        .send(&room, json!({"msgtype": "m.text", "body": "!help"}))
        .await?;
    wait_for("a second answer", || async {
        let answers = organiser.messages(&room).await.ok()?;
        (answers
            .iter()
            .filter(|b| b.starts_with("Commands (organisers only)"))
            .count()
            == 2)
            .then_some(())
    })
    .await?;
    let from_bot: Vec<Value> = organiser
        .timeline(&room)
        .await?
        .into_iter()
        .filter(|e| e["sender"] == json!(bot.user_id) && e["type"] == "m.room.message")
        .collect();
    assert_eq!(from_bot.len(), 2, "{from_bot:?}");
    assert_eq!(
        organiser.membership(&room, &bot.user_id).await?.as_deref(),
        Some("join")
    );
    let roots = operator
        .timeline(&backoffice)
        .await?
        .into_iter()
        .filter(|e| {
            e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.starts_with("[OPEN] "))
        })
        .count();
    assert_eq!(roots, 1, "one request: the customer's");
    drop(sb);
    Ok(())
}

/// Two sources that hear Matrix cannot both name one room as their own.
#[test]
fn one_room_belongs_to_one_source() {
    let text = "[matrix]\nhomeserver = \"http://127.0.0.1:9\"\nuser = \"@bot:x\"\n\
                password = \"p\"\n[sources.help]\nkind = \"matrix_dm\"\n\
                [sources.help.matrix_dm]\nbackoffice_room = \"!ops:x\"\n\
                [sources.conf]\nkind = \"pretix\"\npath_secret = \"0123456789abcdef\"\n\
                [sources.conf.pretix]\nurl = \"http://127.0.0.1:9\"\napi_token = \"t\"\n\
                organisers = [\"@org:x\"]\n[[sources.conf.pretix.events]]\n\
                organizer = \"o\"\nevent = \"e\"\nrooms = [\"!ops:x\"]\n";
    let errs = switchboard::config::parse(text).expect_err("one room, two owners");
    assert!(
        errs.iter()
            .any(|e| e.key == "sources.help.matrix_dm.backoffice_room"
                && e.message.contains("sources.conf.pretix.events.0.rooms.0")
                && e.line == Some(8)),
        "{errs:?}"
    );
    // Without the clash, both on one bot are fine.
    let apart = text.replace("rooms = [\"!ops:x\"]", "rooms = [\"!hall:x\"]");
    assert!(switchboard::config::parse(&apart).is_ok());
}
