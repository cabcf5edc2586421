//! Helpers most test modules share: Switchboard started on a database, a generic webhook
//! ticket's payload, and waits for the bot's messages or for a user to join or leave a room.

use anyhow::Result;
use serde_json::{Value, json};

use crate::harness::{self, Db, Setup, Switchboard, synapse, wait_for};

pub(crate) async fn start(db: Db, bot: &harness::User, extra: &str) -> Result<Switchboard> {
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

pub(crate) fn ticket(
    key: &str,
    status: &str,
    body: Option<&str>,
    people: &[&str],
    owner: &str,
) -> Value {
    json!({
        "ticket": {
            "id": key, "title": format!("Ticket {key} title"), "url": format!("https://desk.example/t/{key}"),
            "status": status, "participants": people, "owner": owner,
        },
        "message": body.map(|b| json!({"body": b})),
    })
}

/// Messages the bot posted, waiting until there are `n`.
pub(crate) async fn wait_messages(
    user: &harness::User,
    room: &str,
    n: usize,
) -> Result<Vec<String>> {
    wait_for(&format!("{n} messages"), || async {
        let m = user.messages(room).await.ok()?;
        (m.len() >= n).then_some(m)
    })
    .await
}

/// Waits until the bot has posted a message containing `text` in `room`; all its messages.
pub(crate) async fn wait_text(bot: &harness::User, room: &str, text: &str) -> Result<Vec<String>> {
    wait_for(&format!("`{text}` in the room"), || async {
        let m = bot.messages(room).await.ok()?;
        m.iter().any(|b| b.contains(text)).then_some(m)
    })
    .await
}

/// Waits until `user` is in `room` (`inside`) or no longer is.
pub(crate) async fn wait_in_room(user: &harness::User, room: &str, inside: bool) -> Result<()> {
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
