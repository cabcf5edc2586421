//! The OTOBO / Znuny connector, with the GenericInterface's documented payloads (Znuny's
//! `Ticket::Generic`, OTOBO's `Generic::PassThrough`) and a stand-in of the
//! GenericTicketConnector REST web service (neither system can run here) that checks every
//! request as the web service's definition documents it: a room per ticket, articles in
//! the room, room messages written back once (through a session that ran out and an
//! answer that was lost), no echo, the room's link answered for a dynamic field, the
//! state followed, the transcript written on close.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use base64::Engine;
use serde_json::{Value, json};
use warp::Filter;
use warp::http::StatusCode;

use crate::common::start;
use crate::harness::{self, Db, synapse, wait_for};

on_both_databases!(otobo_ticket_rooms_both_ways);

const SERVICE: &str = "/otobo/nph-genericinterface.pl/Webservice/GenericTicketConnectorREST";
const PASSWORD: &str = "agent-password";

/// What the stand-in holds: one ticket as TicketGet answers it, the live sessions, and
/// what it was asked.
#[derive(Default)]
struct State {
    ticket: Value,
    sessions: Vec<String>,
    made: usize,
    /// Articles written, as their `Article` came.
    written: Vec<Value>,
    /// The `Attachment` lists that came with them.
    attached: Vec<Value>,
    /// Requests that broke the web service's rules, with why.
    wrong: Vec<String>,
    /// Writes still to answer with a 503 after storing them (an answer lost on the way).
    lose_answers: usize,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn reply(status: StatusCode, body: Value) -> warp::reply::Response {
    warp::http::Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=UTF-8")
        .body(body.to_string().into())
        .unwrap_or_default()
}

/// An operation's error, as the web service answers it: HTTP 200 with `Error`.
fn error(code: &str, message: &str) -> warp::reply::Response {
    reply(
        StatusCode::OK,
        json!({"Error": {"ErrorCode": code, "ErrorMessage": message}}),
    )
}

/// One request to the stand-in.
fn serve(
    state: &Shared,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
) -> warp::reply::Response {
    let mut s = lock(state);
    let Some(path) = path.strip_prefix(SERVICE) else {
        s.wrong
            .push(format!("{method} {path}: not the web service"));
        return reply(StatusCode::NOT_FOUND, json!({}));
    };
    let data: Value = if method == "GET" {
        let pairs: serde_json::Map<String, Value> = url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), json!(v)))
            .collect();
        Value::Object(pairs)
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => {
                s.wrong.push(format!("{method} {path}: not JSON"));
                return reply(StatusCode::BAD_REQUEST, json!({}));
            }
        }
    };
    if (method, path) == ("POST", "/Session") {
        if data["UserLogin"] != "switchboard" || data["Password"] != PASSWORD {
            return error(
                "SessionCreate.AuthFail",
                "SessionCreate: Authorization failing!",
            );
        }
        s.made += 1;
        let id = format!("session-{}", s.made);
        s.sessions.push(id.clone());
        return reply(StatusCode::OK, json!({"SessionID": id}));
    }
    let operation = if method == "GET" {
        "TicketGet"
    } else {
        "TicketUpdate"
    };
    let session = data["SessionID"].as_str().unwrap_or_default().to_string();
    if !s.sessions.contains(&session) {
        return error(&format!("{operation}.AuthFail"), "Authorization failing!");
    }
    let id = s.ticket["TicketID"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if path != format!("/Ticket/{id}") {
        s.wrong.push(format!("{method} {path}: no such ticket"));
        return error(&format!("{operation}.AccessDenied"), "No such ticket");
    }
    match method {
        "GET" => {
            if data["AllArticles"] != "1" {
                s.wrong.push(format!(
                    "GET {path}?{query}: AllArticles=1 is needed for articles"
                ));
            }
            // Files only when asked for (`Attachments`), their contents only with
            // `GetAttachmentContents` (1 unless given).
            let mut ticket = s.ticket.clone();
            let files = data["Attachments"] == "1";
            let contents = data["GetAttachmentContents"] != "0";
            for article in ticket["Article"].as_array_mut().into_iter().flatten() {
                match (files, article.as_object_mut()) {
                    (false, Some(a)) => drop(a.remove("Attachment")),
                    (true, Some(a)) if !contents => {
                        for f in a
                            .get_mut("Attachment")
                            .and_then(Value::as_array_mut)
                            .into_iter()
                            .flatten()
                        {
                            f.as_object_mut().map(|f| f.remove("Content"));
                        }
                    }
                    _ => {}
                }
            }
            reply(StatusCode::OK, json!({"Ticket": [ticket]}))
        }
        "PATCH" => {
            let article = &data["Article"];
            let mut keys: Vec<&String> = data
                .as_object()
                .map(|o| o.keys().collect())
                .unwrap_or_default();
            keys.sort();
            let mut article_keys: Vec<&String> = article
                .as_object()
                .map(|o| o.keys().collect())
                .unwrap_or_default();
            article_keys.sort();
            // Files beside the article: each with its content in base64, its type and name.
            let attachments_fine = data["Attachment"].as_array().is_none_or(|list| {
                list.iter().all(|f| {
                    f.as_object().map(|o| o.len()) == Some(3)
                        && f["Filename"].is_string()
                        && f["ContentType"].is_string()
                        && base64::engine::general_purpose::STANDARD
                            .decode(f["Content"].as_str().unwrap_or("!"))
                            .is_ok()
                })
            });
            keys.retain(|k| *k != "Attachment");
            let fine = attachments_fine
                && keys == ["Article", "SessionID"]
                && article_keys
                    == [
                        "Body",
                        "CommunicationChannel",
                        "ContentType",
                        "IsVisibleForCustomer",
                        "SenderType",
                        "Subject",
                    ]
                && ["Email", "Phone", "Internal"]
                    .contains(&article["CommunicationChannel"].as_str().unwrap_or_default())
                && ["agent", "system", "customer"]
                    .contains(&article["SenderType"].as_str().unwrap_or_default())
                && article["Subject"].as_str().is_some_and(|t| !t.is_empty())
                && article["Body"].as_str().is_some_and(|t| !t.is_empty())
                && article["ContentType"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("text/plain"))
                && matches!(article["IsVisibleForCustomer"].as_u64(), Some(0 | 1));
            if !fine {
                s.wrong.push(format!("PATCH {path}: {data}"));
                return error("TicketUpdate.MissingParameter", "Article is invalid");
            }
            let article_id = 20_000 + s.written.len() as u64;
            let stored = json!({
                "ArticleID": article_id.to_string(), "TicketID": id, "SenderType": "agent",
                "IsVisibleForCustomer": article["IsVisibleForCustomer"].to_string(),
                "From": "Switchboard Agent", "FromRealname": "Switchboard Agent",
                "Body": article["Body"], "ContentType": article["ContentType"],
                "MimeType": "text/plain",
            });
            if let Some(list) = s.ticket["Article"].as_array_mut() {
                list.push(stored);
            }
            s.written.push(article.clone());
            s.attached.push(data["Attachment"].clone());
            if s.lose_answers > 0 {
                s.lose_answers -= 1;
                return reply(StatusCode::SERVICE_UNAVAILABLE, json!({}));
            }
            reply(
                StatusCode::OK,
                json!({"TicketID": id, "TicketNumber": s.ticket["TicketNumber"],
                       "ArticleID": article_id.to_string()}),
            )
        }
        _ => {
            s.wrong.push(format!(
                "{method} {path}: not an operation this connector needs"
            ));
            reply(StatusCode::NOT_FOUND, json!({}))
        }
    }
}

/// The stand-in on a free port; its address.
async fn web_service(state: Shared) -> Result<String> {
    let route = warp::path::full()
        .and(warp::method())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::body::bytes())
        .map(
            move |path: warp::path::FullPath,
                  method: warp::http::Method,
                  query: String,
                  body: bytes::Bytes| {
                serve(&state, method.as_str(), path.as_str(), &query, &body)
            },
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(warp::serve(route).incoming(listener).run());
    Ok(format!("http://{addr}"))
}

fn fixture(name: &str) -> Result<Value> {
    let path = harness::repo()
        .join("tests/fixtures/otobo-znuny")
        .join(name);
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

/// The ticket as TicketGet answers it, made from the invoker's `TicketDeepGet`: `Article`,
/// not `Articles`, and no `*Data` hashes.
fn ticket_get(deep: &Value) -> Value {
    let mut t = deep.clone();
    if let Some(map) = t.as_object_mut() {
        let articles = map.remove("Articles").unwrap_or_default();
        map.retain(|k, _| {
            !k.ends_with("Data") && k != "Article" && k != "CustomerUser" && k != "CustomerCompany"
        });
        map.insert("Article".into(), articles);
    }
    t
}

async fn otobo_ticket_rooms_both_ways(db: Db) -> Result<()> {
    let hs = synapse();
    let bot = hs.user("bot").await?;
    let alice = hs.user("alice").await?;
    let carl = hs.user("carl").await?;
    let created = fixture("znuny-ticket-generic-ArticleCreate.json")?;
    let state: Shared = Arc::default();
    lock(&state).ticket = ticket_get(&created["Ticket"]);
    // The first article has a file.
    if let Some(first) = lock(&state).ticket["Article"][0].as_object_mut() {
        first.insert(
            "Attachment".into(),
            json!([{"Filename": "vpn.log", "FilesizeRaw": "12", "FileID": "2",
                    "ContentType": "text/plain; charset=\"utf-8\"",
                    "Content": base64::engine::general_purpose::STANDARD.encode("tunnel reset")}]),
        );
    }
    let base = web_service(state.clone()).await?;
    let hook_password = format!("invoker-{}", harness::suffix());
    // Where agents' browsers reach Switchboard (here: the link's path is followed on the
    // test's instance).
    let sb_base = "https://switchboard.example.org";
    let source = format!(
        "\n[sources.znuny]\nkind = \"otobo\"\n\n[sources.znuny.basic_auth]\n\
         username = \"znuny\"\npassword = \"{hook_password}\"\n\n\
         [sources.znuny.otobo]\nurl = \"{base}{SERVICE}\"\nuser = \"switchboard\"\n\
         password = \"{PASSWORD}\"\nsystem = \"Znuny\"\n\n\
         [sources.znuny.otobo.link]\nfield = \"MatrixRoom\"\nbase = \"{sb_base}\"\n\n\
         [sources.znuny.otobo.room]\nencrypted = false\n\n\
         [sources.znuny.otobo.people.users]\n\
         \"jdoe\" = \"{}\"\n\"max.mustermann\" = \"{}\"\n",
        alice.user_id, carl.user_id
    );
    let sb = start(db, &bot, &source).await?;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("znuny:{hook_password}"))
    );
    let call = async |body: &Value, auth: Option<&str>| {
        let headers: Vec<(&str, String)> = auth
            .map(|a| ("Authorization", a.to_string()))
            .into_iter()
            .collect();
        sb.hook_raw("znuny", body.to_string().into_bytes(), &headers)
            .await
    };

    // Unauthenticated: refused. Znuny's ArticleCreate: accepted, the room's link answered
    // for the dynamic field.
    assert_eq!(call(&created, None).await?.0, 401);
    let (status, answer) = call(&created, Some(&auth)).await?;
    assert_eq!(status, 200, "{answer}");
    let link = answer["OTRS_TicketDynamicFieldSet_MatrixRoom"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(link.ends_with("/link/znuny/4711"), "{answer}");
    let room = sb.wait_room_in("znuny", "4711").await?;
    let said = wait_for("both articles", || async {
        let m = bot.messages(&room).await.ok()?;
        (m.iter()
            .filter(|b| b.contains("Max Mustermann opened the ticket:\nHello,"))
            .count()
            == 1
            && m.iter()
                .any(|b| b.starts_with("Example Support replied:\nDear Max Mustermann")))
        .then_some(m)
    })
    .await?;
    assert!(
        !said.iter().any(|m| m.contains("Not in Matrix")),
        "{said:?}"
    );
    assert!(
        said.iter()
            .any(|m| m.contains("📎 vpn.log (12 bytes, below)")),
        "{said:?}"
    );
    let file = wait_for("the file in the room", || async {
        let t = bot.timeline(&room).await.ok()?;
        t.into_iter()
            .find(|e| e["content"]["msgtype"] == "m.file" && e["content"]["body"] == "vpn.log")
    })
    .await?;
    let url = file["content"]["url"].as_str().unwrap_or_default();
    assert_eq!(bot.download(url).await?, b"tunnel reset");
    let name = bot.state(&room, "m.room.name").await?.unwrap_or_default();
    assert_eq!(
        name["name"],
        "Znuny #2024061810000017: VPN connection drops every few minutes"
    );
    let power = bot
        .state(&room, "m.room.power_levels")
        .await?
        .unwrap_or_default();
    assert_eq!(
        power["users"][&alice.user_id], 100,
        "the owner is admin: {power}"
    );
    // The "open chat" link the ticket now holds leads to the room.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let path = link.trim_start_matches(sb_base);
    let found = no_redirects
        .get(format!("{}{path}", sb.base))
        .send()
        .await?;
    assert_eq!(found.status().as_u16(), 302);
    let location = found
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .unwrap_or_default();
    assert!(location.ends_with(&room), "{location}");
    // The same call again (Znuny retries): a duplicate.
    let (_, again) = call(&created, Some(&auth)).await?;
    assert_eq!(again["duplicate"], true, "{again}");

    // Room -> ticket: Carl's message becomes an article, once, although the session ran
    // out and the first answer was lost.
    {
        let mut s = lock(&state);
        s.sessions.clear();
        s.lose_answers = 1;
    }
    wait_for("Carl's invite", || async {
        (bot.membership(&room, &carl.user_id)
            .await
            .ok()
            .flatten()
            .as_deref()
            == Some("invite"))
        .then_some(())
    })
    .await?;
    carl.join(&room).await?;
    carl.send(
        &room,
        json!({"msgtype": "m.text", "body": "Still dropping."}),
    )
    .await?;
    let article = wait_for("the article", || async {
        lock(&state).written.first().cloned()
    })
    .await?;
    let body = article["Body"].as_str().unwrap_or_default();
    assert!(
        body.ends_with(&format!("({}) in Matrix:\nStill dropping.", carl.user_id)),
        "{body}"
    );
    assert_eq!(article["IsVisibleForCustomer"], 0);

    // OTOBO's PassThrough names only the ticket: an agent's new article reaches the room,
    // the one Switchboard wrote does not come back.
    {
        let mut s = lock(&state);
        if let Some(list) = s.ticket["Article"].as_array_mut() {
            list.push(
                json!({"ArticleID": "30000", "SenderType": "agent", "IsVisibleForCustomer": "1",
                             "From": "Jane Doe <jane.doe@example.com>", "FromRealname": "Jane Doe",
                             "Body": "<p>We replaced your router.</p>", "MimeType": "text/html",
                             "ContentType": "text/html; charset=utf-8"}),
            );
        }
    }
    let (status, _) = call(
        &fixture("otobo-passthrough-TicketCreate.json")?,
        Some(&auth),
    )
    .await?;
    assert_eq!(status, 200);
    let said = wait_for("Jane's reply", || async {
        let m = bot.messages(&room).await.ok()?;
        m.iter()
            .any(|b| b == "Jane Doe replied:\nWe replaced your router.")
            .then_some(m)
    })
    .await?;
    assert_eq!(
        said.iter().filter(|m| m.contains("Still dropping")).count(),
        1,
        "no echo: {said:?}"
    );
    assert_eq!(
        lock(&state).written.len(),
        1,
        "written once, although its answer was lost"
    );
    // A file Carl sends goes with the article.
    let mxc = carl.upload(b"ping log".to_vec(), "text/plain").await?;
    carl.send(
        &room,
        json!({"msgtype": "m.file", "body": "ping.log", "url": mxc,
               "info": {"mimetype": "text/plain", "size": 8}}),
    )
    .await?;
    let attached = wait_for("the article with the file", || async {
        lock(&state).attached.get(1).cloned()
    })
    .await?;
    assert_eq!(
        attached,
        json!([{"Content": "cGluZyBsb2c=", "ContentType": "text/plain", "Filename": "ping.log"}])
    );

    // Closed: the room is told and renamed, the transcript written into the ticket.
    let closed = fixture("znuny-ticket-generic-TicketStateUpdate-closed.json")?;
    {
        let mut s = lock(&state);
        s.ticket["State"] = closed["Ticket"]["State"].clone();
        s.ticket["StateType"] = json!("closed");
    }
    call(&closed, Some(&auth)).await?;
    wait_for("the closed name", || async {
        let n = bot.state(&room, "m.room.name").await.ok()??;
        (n["name"] == "[closed successful] Znuny #2024061810000017: VPN connection drops every few minutes").then_some(())
    })
    .await?;
    let transcript = wait_for("the transcript", || async {
        lock(&state)
            .written
            .iter()
            .find(|a| {
                a["Body"]
                    .as_str()
                    .is_some_and(|b| b.starts_with("Transcript"))
            })
            .cloned()
    })
    .await?;
    assert!(
        transcript["Body"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("{}: Still dropping.", carl.user_id))
    );
    let wrong = lock(&state).wrong.clone();
    assert_eq!(
        wrong,
        Vec::<String>::new(),
        "requests the web service would refuse"
    );
    assert!(lock(&state).made >= 2, "the session was made again");
    Ok(())
}
