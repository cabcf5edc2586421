//! The pretix connector, against a real pretix: paid orders invite their attendees, missed
//! webhooks are caught up, organisers' chat commands, and OAuth instead of an API token.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::common::{start, wait_in_room};
use crate::harness::{self, Db, Setup, Switchboard, synapse, wait_for};

on_both_databases!(pretix_orders_invite_attendees);

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
    // Counted before sending: the read may be done before the last answer arrives.
    let before = orders_done(0).await.unwrap_or(0);
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
