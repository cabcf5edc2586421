//! The Zammad connector, with Zammad's documented trigger webhook and a stand-in of its
//! REST API (Zammad cannot run here) that checks every request as Zammad's API documents
//! it: a room per ticket with its owner and customer, articles in the room, room messages
//! written back as notes exactly once, no echo, the state and owner followed, the
//! transcript written on close.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use warp::Filter;
use warp::http::StatusCode;

use crate::common::{start, wait_in_room, wait_text};
use crate::harness::{self, Db, synapse, wait_for};

on_both_databases!(
    zammad_ticket_rooms_both_ways,
    zammad_merged_ticket_points_to_the_surviving_one
);

const TOKEN: &str = "zammad-test-token";
/// Switchboard's own Zammad user.
const ME: u64 = 2;

/// What the stand-in holds: one ticket, its articles, the users, and what it was asked.
#[derive(Default)]
struct State {
    ticket: Value,
    articles: Vec<Value>,
    users: HashMap<u64, Value>,
    /// Notes written, with the `From` header they came with.
    written: Vec<(Value, Option<String>)>,
    /// Requests that broke the API's rules, with why.
    wrong: Vec<String>,
    /// Writes still to answer with a 503 after storing them (an answer lost on the way).
    lose_answers: usize,
    /// The ticket's tags.
    tags: Vec<String>,
    /// Attachments' contents by `<ticket>/<article>/<attachment>`.
    files: HashMap<String, Vec<u8>>,
    /// The ticket's links, as `GET /links` gives them (`links` and `assets`).
    links: Value,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn reply(status: StatusCode, body: Value) -> warp::reply::Response {
    warp::http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.to_string().into())
        .unwrap_or_default()
}

/// The stand-in of Zammad's REST API (`/api/v1`), on a free port; its base URL.
async fn zammad(state: Shared) -> Result<String> {
    let state_filter = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    let route = warp::path("api")
        .and(warp::path("v1"))
        .and(warp::path::tail())
        .and(warp::method())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("from"))
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::body::bytes())
        .and(state_filter)
        .map(
            |tail: warp::path::Tail,
             method: warp::http::Method,
             auth: Option<String>,
             from: Option<String>,
             content_type: Option<String>,
             query: String,
             body: bytes::Bytes,
             state: Shared| {
                let mut s = lock(&state);
                let path = tail.as_str().to_string();
                if auth.as_deref() != Some(&format!("Token token={TOKEN}")) {
                    s.wrong
                        .push(format!("{method} {path}: Authorization {auth:?}"));
                    return reply(
                        StatusCode::UNAUTHORIZED,
                        json!({"error": "authentication failed"}),
                    );
                }
                let id = |p: &str| p.rsplit('/').next().and_then(|n| n.parse::<u64>().ok());
                match (method.as_str(), path.as_str()) {
                    ("GET", p) if p.starts_with("tickets/") => {
                        if query != "expand=true" {
                            s.wrong
                                .push(format!("GET {p}?{query}: the names need expand=true"));
                        }
                        if id(p) != s.ticket["id"].as_u64() {
                            return reply(StatusCode::NOT_FOUND, json!({"error": "Not Found"}));
                        }
                        let mut t = s.ticket.clone();
                        // Expanded: the names beside the IDs.
                        for (key, id_key) in [("owner", "owner_id"), ("customer", "customer_id")] {
                            let login = t[id_key]
                                .as_u64()
                                .and_then(|u| s.users.get(&u))
                                .map(|u| u["login"].clone());
                            t[key] = login.unwrap_or(json!("-"));
                        }
                        reply(StatusCode::OK, t)
                    }
                    ("GET", p) if p.starts_with("ticket_attachment/") => {
                        let key = p.trim_start_matches("ticket_attachment/");
                        match s.files.get(key) {
                            Some(data) => warp::http::Response::builder()
                                .header("content-type", "application/octet-stream")
                                .body(data.clone().into())
                                .unwrap_or_default(),
                            None => reply(StatusCode::NOT_FOUND, json!({"error": "Not Found"})),
                        }
                    }
                    ("GET", "links") => {
                        let want =
                            format!("link_object=Ticket&link_object_value={}", s.ticket["id"]);
                        if query != want {
                            s.wrong.push(format!("GET links?{query}: not {want}"));
                        }
                        let links = match s.links.is_null() {
                            true => json!({"links": [], "assets": {}}),
                            false => s.links.clone(),
                        };
                        reply(StatusCode::OK, links)
                    }
                    ("GET", "tags") => {
                        let want = format!("object=Ticket&o_id={}", s.ticket["id"]);
                        if query != want {
                            s.wrong.push(format!("GET tags?{query}: not {want}"));
                        }
                        reply(StatusCode::OK, json!({ "tags": s.tags }))
                    }
                    ("GET", p) if p.starts_with("ticket_articles/by_ticket/") => {
                        reply(StatusCode::OK, Value::Array(s.articles.clone()))
                    }
                    ("GET", "users/me") => reply(
                        StatusCode::OK,
                        json!({"id": ME, "login": "switchboard", "firstname": "Switchboard"}),
                    ),
                    ("GET", p) if p.starts_with("users/") => {
                        match id(p).and_then(|u| s.users.get(&u)) {
                            Some(user) => reply(StatusCode::OK, user.clone()),
                            None => reply(StatusCode::NOT_FOUND, json!({"error": "Not Found"})),
                        }
                    }
                    ("POST", "ticket_articles") => {
                        if !content_type
                            .as_deref()
                            .is_some_and(|c| c.starts_with("application/json"))
                        {
                            s.wrong.push(format!(
                                "POST ticket_articles: Content-Type {content_type:?}"
                            ));
                        }
                        let Ok(note) = serde_json::from_slice::<Value>(&body) else {
                            s.wrong.push("POST ticket_articles: not JSON".into());
                            return reply(
                                StatusCode::UNPROCESSABLE_ENTITY,
                                json!({"error": "not JSON"}),
                            );
                        };
                        let mut keys: Vec<&String> = note
                            .as_object()
                            .map(|o| o.keys().filter(|k| *k != "attachments").collect())
                            .unwrap_or_default();
                        keys.sort();
                        // Each attachment: a file name, its content in base64, its type.
                        let attachments_ok = note["attachments"].as_array().is_none_or(|a| {
                            a.iter().all(|f| {
                                use base64::Engine;
                                let data = f["data"].as_str().unwrap_or("!");
                                f.as_object().map(|o| o.len()) == Some(3)
                                    && f["filename"].is_string()
                                    && f["mime-type"].is_string()
                                    && base64::engine::general_purpose::STANDARD
                                        .decode(data)
                                        .is_ok()
                            })
                        });
                        if !attachments_ok
                            || keys != ["body", "content_type", "internal", "ticket_id", "type"]
                            || note["ticket_id"] != s.ticket["id"]
                            || note["type"] != "note"
                            || note["content_type"] != "text/plain"
                            || !note["internal"].is_boolean()
                            || !note["body"].is_string()
                        {
                            s.wrong.push(format!("POST ticket_articles: {note}"));
                            return reply(
                                StatusCode::UNPROCESSABLE_ENTITY,
                                json!({"error": "bad article"}),
                            );
                        }
                        // `From`: a login or e-mail address of a known user.
                        let author = match &from {
                            None => Some(ME),
                            Some(f) => s
                                .users
                                .iter()
                                .find(|(_, u)| u["login"] == f.as_str() || u["email"] == f.as_str())
                                .map(|(id, _)| *id),
                        };
                        let Some(author) = author else {
                            return reply(
                                StatusCode::UNPROCESSABLE_ENTITY,
                                json!({"error": "No such user"}),
                            );
                        };
                        let article = json!({
                            "id": 1000 + s.articles.len() as u64, "ticket_id": note["ticket_id"],
                            "type": "note", "sender": "Agent", "internal": note["internal"],
                            "content_type": "text/plain", "body": note["body"],
                            "created_by_id": author, "attachments": [],
                        });
                        s.articles.push(article.clone());
                        s.written.push((note, from));
                        if s.lose_answers > 0 {
                            s.lose_answers -= 1;
                            return reply(
                                StatusCode::SERVICE_UNAVAILABLE,
                                json!({"error": "lost"}),
                            );
                        }
                        reply(StatusCode::CREATED, article)
                    }
                    _ => {
                        s.wrong
                            .push(format!("{method} {path}: not an API this connector needs"));
                        reply(StatusCode::NOT_FOUND, json!({"error": "Not Found"}))
                    }
                }
            },
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(warp::serve(route).incoming(listener).run());
    Ok(format!("http://{addr}"))
}

/// The webhook's payload as Zammad's documentation gives it.
fn payload() -> Result<Value> {
    let path = harness::repo().join("tests/fixtures/zammad/ticket-article.json");
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

/// Sends the ticket's webhook as Zammad does: signed with HMAC-SHA1, with a delivery ID.
async fn deliver(
    sb: &harness::Switchboard,
    body: &Value,
    delivery: &str,
    secret: &str,
) -> Result<(u16, Value)> {
    let raw = body.to_string().into_bytes();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).context("key")?;
    mac.update(&raw);
    let signature = format!("sha1={}", hex::encode(mac.finalize().into_bytes()));
    sb.hook_raw(
        "zammad",
        raw,
        &[
            ("X-Hub-Signature", signature),
            ("X-Zammad-Delivery", delivery.to_string()),
            ("X-Zammad-Trigger", "Switchboard".to_string()),
            ("User-Agent", "Zammad User Agent".to_string()),
        ],
    )
    .await
}

/// The stand-in's state for the webhook's ticket: the ticket, its article and its people.
fn ticket_of(body: &Value) -> Shared {
    let state: Shared = Arc::default();
    {
        let mut s = lock(&state);
        let t = &body["ticket"];
        s.ticket = json!({
            "id": t["id"], "number": t["number"], "title": t["title"],
            "group": t["group"]["name"], "state": t["state"], "priority": t["priority"]["name"],
            "owner_id": t["owner_id"], "customer_id": t["customer_id"],
            "updated_by_id": t["updated_by_id"], "group_id": t["group_id"],
        });
        s.articles.push(body["article"].clone());
        // The article's image: as many bytes as its size says.
        let image: Vec<u8> = (0..35574u32).map(|i| (i % 251) as u8).collect();
        s.files.insert("81/104/174".into(), image);
        for who in [&t["owner"], &t["customer"], &t["created_by"]] {
            s.users.insert(who["id"].as_u64().unwrap_or(0), who.clone());
        }
    }
    state
}

async fn zammad_ticket_rooms_both_ways(db: Db) -> Result<()> {
    let hs = synapse();
    let bot = hs.user("bot").await?;
    let emma = hs.user("emma").await?;
    let emily = hs.user("emily").await?;
    let chris = hs.user("chris").await?;
    let dora = hs.user("dora").await?;
    let fred = hs.user("fred").await?;
    let body = payload()?;
    let state = ticket_of(&body);
    let url = zammad(state.clone()).await?;
    let secret = format!("zammad-secret-{}", harness::suffix());
    let source = format!(
        "\n[sources.zammad]\nkind = \"zammad\"\n\n[sources.zammad.signature]\n\
         secret = \"{secret}\"\nheader = \"X-Hub-Signature\"\nprefix = \"sha1=\"\n\
         algorithm = \"sha1\"\n\n[sources.zammad.zammad]\nurl = \"{url}\"\n\
         token = \"{TOKEN}\"\ngroups = [\"Service Desk\"]\n\n\
         [sources.zammad.zammad.room]\nencrypted = false\n\n\
         [sources.zammad.zammad.agents]\n\"Service Desk\" = [\"dora@chrispresso.com\"]\n\n\
         [sources.zammad.zammad.people.users]\n\
         \"emma@chrispresso.com\" = \"{}\"\n\"emily@example.com\" = \"{}\"\n\
         \"chris@chrispresso.com\" = \"{}\"\n\"dora@chrispresso.com\" = \"{}\"\n\
         \"fred@example.com\" = \"{}\"\n",
        emma.user_id, emily.user_id, chris.user_id, dora.user_id, fred.user_id
    );
    let sb = start(db, &bot, &source).await?;

    // A webhook signed with another secret is refused, one without a signature too; the
    // real one opens the room.
    let (status, _) = deliver(&sb, &body, "d0", "not-the-secret").await?;
    assert_eq!(status, 401, "a bad signature");
    let (status, _) = sb
        .hook_raw(
            "zammad",
            body.to_string().into_bytes(),
            &[("X-Zammad-Delivery", "d0".to_string())],
        )
        .await?;
    assert_eq!(status, 401, "no signature");
    let (status, answer) = deliver(&sb, &body, "d1", &secret).await?;
    assert_eq!(
        (status, &answer["duplicate"]),
        (200, &json!(false)),
        "{answer}"
    );
    let room = sb.wait_room_in("zammad", "81").await?;
    let opened = wait_text(&bot, &room, "opened the ticket").await?;
    assert!(
        opened.iter().any(|m| m
            .starts_with("Christopher Miller opened the ticket:\nThis is a simple Webhook Test.")
            && m.contains("📎 image1.jpeg (35574 bytes, below)")),
        "{opened:?}"
    );
    let image = wait_for("the image in the room", || async {
        let t = bot.timeline(&room).await.ok()?;
        t.into_iter().find(|e| e["content"]["msgtype"] == "m.image")
    })
    .await?;
    assert_eq!(image["content"]["body"], "image1.jpeg");
    let url = image["content"]["url"].as_str().context("url")?;
    let want = lock(&state).files["81/104/174"].clone();
    assert_eq!(bot.download(url).await?, want);
    let name = bot.state(&room, "m.room.name").await?.unwrap_or_default();
    assert_eq!(name["name"], "Zammad #10081: Webhook-Test");
    let power = bot
        .state(&room, "m.room.power_levels")
        .await?
        .unwrap_or_default();
    assert_eq!(
        power["users"][&emma.user_id], 100,
        "the owner is admin: {power}"
    );
    // The owner, the customer and the group's agent.
    for user in [&emma, &emily, &dora] {
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
    // Zammad redelivers: the same delivery is a duplicate.
    let (status, answer) = deliver(&sb, &body, "d1", &secret).await?;
    assert_eq!(
        (status, &answer["duplicate"]),
        (200, &json!(true)),
        "{answer}"
    );

    // Room -> Zammad: Emily's message becomes a note written as her, once, although the
    // answer to the first write is lost.
    lock(&state).lose_answers = 1;
    emily.join(&room).await?;
    emily
        .send(
            &room,
            json!({"msgtype": "m.text", "body": "It still burns."}),
        )
        .await?;
    let note = wait_for("the note", || async {
        lock(&state).written.first().cloned()
    })
    .await?;
    assert_eq!(note.0["body"], "It still burns.");
    assert_eq!(note.0["internal"], true);
    assert_eq!(note.1.as_deref(), Some("emily@example.com"));

    // Zammad -> room: an agent's reply; the note Switchboard wrote does not come back.
    {
        let mut s = lock(&state);
        let n = s.articles.len() as u64;
        s.articles.push(json!({
            "id": 2000 + n, "ticket_id": 81, "type": "note", "sender": "Agent",
            "internal": false, "content_type": "text/html", "cc": "Fred <fred@example.com>",
            "body": "<p>We are on it.</p>", "created_by_id": 5, "attachments": [],
        }));
    }
    deliver(&sb, &body, "d2", &secret).await?;
    let said = wait_text(&bot, &room, "Emma Taylor replied:\nWe are on it.").await?;
    // Fred, copied on the reply, is invited.
    wait_for("Fred's invite", || async {
        (bot.membership(&room, &fred.user_id)
            .await
            .ok()
            .flatten()?
            .as_str()
            == "invite")
            .then_some(())
    })
    .await?;
    assert_eq!(
        said.iter().filter(|m| m.contains("It still burns")).count(),
        1,
        "Emily's message, not echoed: {said:?}"
    );
    assert_eq!(
        lock(&state).written.len(),
        1,
        "written once, although its answer was lost"
    );
    // A file Emily sends is attached to the note.
    let mxc = emily
        .upload(b"smoke detector log\n".to_vec(), "text/plain")
        .await?;
    emily
        .send(
            &room,
            json!({"msgtype": "m.file", "body": "smoke.log", "url": mxc,
                   "info": {"mimetype": "text/plain", "size": 19}}),
        )
        .await?;
    let filed = wait_for("the note with the file", || async {
        lock(&state).written.get(1).cloned()
    })
    .await?;
    assert_eq!(
        filed.0["attachments"],
        json!([{"filename": "smoke.log", "data": "c21va2UgZGV0ZWN0b3IgbG9nCg==",
                "mime-type": "text/plain"}])
    );

    // Closed by Emma, given to Chris: the room is told, renamed, Chris invited and
    // promoted, Emma lowered, and the transcript written into the ticket.
    {
        let mut s = lock(&state);
        s.ticket["state"] = json!("closed");
        s.ticket["owner_id"] = json!(3);
        s.ticket["updated_by_id"] = json!(5);
    }
    // The first webhook once more, late and under another delivery ID (out of order): the
    // ticket is read as it is now, and nothing is posted twice.
    deliver(&sb, &body, "d1-late", &secret).await?;
    deliver(&sb, &body, "d3", &secret).await?;
    let said = wait_text(&bot, &room, "Emma Taylor set the ticket to closed").await?;
    assert_eq!(
        said.iter()
            .filter(|m| m.contains("opened the ticket"))
            .count(),
        1,
        "{said:?}"
    );
    let transcript = wait_for("the transcript", || async {
        lock(&state)
            .written
            .iter()
            .find(|(n, _)| {
                n["body"]
                    .as_str()
                    .is_some_and(|b| b.starts_with("Transcript"))
            })
            .cloned()
    })
    .await?;
    let text = transcript.0["body"].as_str().unwrap_or_default();
    assert!(
        text.contains(&format!("{}: It still burns.", emily.user_id)),
        "{text}"
    );
    assert_eq!(
        transcript.1, None,
        "the transcript is Switchboard's own note"
    );
    let renamed = wait_for("the closed name", || async {
        let n = bot.state(&room, "m.room.name").await.ok()??;
        (n["name"] == "[closed] Zammad #10081: Webhook-Test").then_some(())
    })
    .await;
    renamed?;
    let power = wait_for("the new owner's power", || async {
        let p = bot.state(&room, "m.room.power_levels").await.ok()??;
        (p["users"][&chris.user_id] == 100).then_some(p)
    })
    .await?;
    assert_eq!(power["users"][&emma.user_id], 0, "{power}");
    wait_in_room(&emily, &room, true).await?;
    let wrong = lock(&state).wrong.clone();
    assert_eq!(wrong, Vec::<String>::new(), "requests Zammad would refuse");
    Ok(())
}

/// A source that gives rooms to tickets tagged `chat` of normal priority only: the
/// ticket's first webhook (tagged `billing`) leaves it without a room; tagged `chat` later,
/// its next webhook opens the room with the ticket's articles.
#[tokio::test]
async fn zammad_rooms_for_tagged_tickets() -> Result<()> {
    let hs = synapse();
    let bot = hs.user("bot").await?;
    let body = payload()?;
    let state = ticket_of(&body);
    lock(&state).tags = vec!["billing".into()];
    let url = zammad(state.clone()).await?;
    let secret = format!("zammad-secret-{}", harness::suffix());
    let source = format!(
        "\n[sources.zammad]\nkind = \"zammad\"\n\n[sources.zammad.signature]\n\
         secret = \"{secret}\"\nheader = \"X-Hub-Signature\"\nprefix = \"sha1=\"\n\
         algorithm = \"sha1\"\n\n[sources.zammad.zammad]\nurl = \"{url}\"\n\
         token = \"{TOKEN}\"\n\n[sources.zammad.zammad.room]\nencrypted = false\n\n\
         [sources.zammad.zammad.select.fields]\ntags = [\"chat\", \"vip\"]\n\
         priority = [\"2 normal\"]\n\"fields.group_id\" = [\"3\"]\n",
    );
    let sb = start(Db::Sqlite, &bot, &source).await?;
    let (status, _) = deliver(&sb, &body, "t1", &secret).await?;
    assert_eq!(status, 200);
    wait_for("the ticket skipped", || async {
        let results = sb.sqlite_results("zammad", "81").await.ok()?;
        results
            .iter()
            .any(|r| r == "skipped: its tags is not chat or vip")
            .then_some(())
    })
    .await?;
    assert_eq!(sb.room_in("zammad", "81").await?, None);
    lock(&state).tags = vec!["billing".into(), "Chat".into()];
    let (status, _) = deliver(&sb, &body, "t2", &secret).await?;
    assert_eq!(status, 200);
    let room = sb.wait_room_in("zammad", "81").await?;
    wait_text(&bot, &room, "This is a simple Webhook Test.").await?;
    let wrong = lock(&state).wrong.clone();
    assert_eq!(wrong, Vec::<String>::new(), "requests Zammad would refuse");
    Ok(())
}

/// A ticket merged into another: its room is closed with a notice that names the surviving
/// ticket, found through the link Zammad makes between the two.
async fn zammad_merged_ticket_points_to_the_surviving_one(db: Db) -> Result<()> {
    let hs = synapse();
    let bot = hs.user("bot").await?;
    let body = payload()?;
    let state = ticket_of(&body);
    let url = zammad(state.clone()).await?;
    let secret = format!("zammad-secret-{}", harness::suffix());
    let source = format!(
        "\n[sources.zammad]\nkind = \"zammad\"\n\n[sources.zammad.signature]\n\
         secret = \"{secret}\"\nheader = \"X-Hub-Signature\"\nprefix = \"sha1=\"\n\
         algorithm = \"sha1\"\n\n[sources.zammad.zammad]\nurl = \"{url}\"\n\
         token = \"{TOKEN}\"\n\n[sources.zammad.zammad.room]\nencrypted = false\n",
    );
    let sb = start(db, &bot, &source).await?;
    deliver(&sb, &body, "m1", &secret).await?;
    let room = sb.wait_room_in("zammad", "81").await?;
    wait_text(&bot, &room, "opened the ticket").await?;
    {
        let mut s = lock(&state);
        s.ticket["state"] = json!("merged");
        s.links = json!({
            "links": [{"link_type": "parent", "link_object": "Ticket", "link_object_value": 82}],
            "assets": {"Ticket": {"82": {"id": 82, "number": "10082", "title": "Printers"}}},
        });
    }
    deliver(&sb, &body, "m2", &secret).await?;
    let said = wait_text(
        &bot,
        &room,
        "The ticket was merged into Zammad #10082: the conversation goes on there.",
    )
    .await?;
    assert!(
        said.iter().all(|m| !m.contains("set the ticket to merged")),
        "{said:?}"
    );
    let wrong = lock(&state).wrong.clone();
    assert_eq!(wrong, Vec::<String>::new(), "requests Zammad would refuse");
    Ok(())
}
