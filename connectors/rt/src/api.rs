//! RT's REST2, as far as a ticket's room needs it: the ticket, its history since a
//! transaction, a transaction's message, users and queues (both kept once read), writing a
//! comment or a reply, and the tickets changed since a time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use reqwest::Method;
use serde_json::{Value, json};
use switchboard_connector::{Failure, Secret};
use switchboard_ticket_rooms::Person;

/// A ticket as the room needs it; people by their RT user names.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Ticket {
    pub id: u64,
    /// The ticket it was merged into (RT shows that one in its place); its own ID when it
    /// was not merged.
    pub effective: u64,
    pub subject: String,
    pub status: String,
    pub queue: String,
    pub priority: String,
    /// Custom fields by name, with their values.
    pub fields: BTreeMap<String, Vec<String>>,
    /// `Nobody` when it has none.
    pub owner: String,
    pub requestors: Vec<String>,
    pub cc: Vec<String>,
    pub admin_cc: Vec<String>,
}

/// One transaction of a ticket's history.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Transaction {
    pub id: u64,
    /// RT's `Type`: `Create`, `Correspond`, `Comment`, `Status`, `Set`, `AddWatcher`, ...
    pub kind: String,
    pub field: String,
    pub old: String,
    pub new: String,
    /// The user name of whoever made it.
    pub creator: String,
}

/// A transaction's message.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Message {
    pub text: String,
    pub files: Vec<switchboard_ticket_rooms::File>,
}

/// A REST2 time (`2026-12-03T13:15:33Z`) as TicketSQL compares times
/// (`2026-12-03 13:15:33`, UTC).
pub(crate) fn rt_time(rest2: &str) -> String {
    rest2.trim_end_matches('Z').replacen('T', " ", 1)
}

/// REST2 of one RT, with one token.
pub(crate) struct Rt {
    rest2: String,
    token: Secret,
    http: reqwest::Client,
    people: Mutex<HashMap<String, Person>>,
    queues: Mutex<HashMap<String, String>>,
    /// The user custom field that holds a user's Matrix ID.
    field: Option<String>,
}

const PAGE: u32 = 100;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a cache inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A scalar as text (RT sends numbers as strings, mostly).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// The `id`s of a list of user references.
fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|u| text(&u["id"])).collect())
        .unwrap_or_default()
}

impl Rt {
    pub fn new(rest2: String, token: Secret, http: reqwest::Client, field: Option<String>) -> Rt {
        Rt {
            rest2,
            token,
            http,
            people: Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            field,
        }
    }

    /// One request; its JSON answer, failures sorted as everywhere (network and 502-504
    /// pass, other 5xx are refusals, 4xx are permanent).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.rest2)
        };
        let mut request = self
            .http
            .request(method.clone(), &url)
            .header("Authorization", format!("token {}", self.token.expose()))
            .header("Accept", "application/json");
        if let Some(body) = body {
            request = request.json(&body);
        }
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let response = request
            .send()
            .await
            .map_err(|e| Failure::transient(format!("RT: {what}: {}", e.without_url())))?;
        let status = response.status();
        if status.is_success() {
            return response
                .json()
                .await
                .map_err(|e| Failure::transient(format!("RT's answer to {what}: {e}")));
        }
        let headers = response.headers().clone();
        let answer: Value = response.json().await.unwrap_or_default();
        let why = answer["message"].as_str().unwrap_or("no reason given");
        let message = match status.as_u16() {
            401 | 403 => format!(
                "RT refused the token ({status}) for {what}: {why}; check the token and the \
                 user's rights"
            ),
            _ => format!("RT answered {status} for {what}: {why}"),
        };
        Err(Failure::from_answer(status, &headers, message))
    }

    async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call(Method::GET, path, None).await
    }

    /// Each page of a collection, from the first.
    async fn pages(&self, path: &str) -> Result<Vec<Value>, Failure> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut next = Some(format!("{path}{sep}per_page={PAGE}"));
        let mut items = Vec::new();
        while let Some(page) = next.take() {
            let answer = self.get(&page).await?;
            items.extend(answer["items"].as_array().cloned().unwrap_or_default());
            next = answer["next_page"].as_str().map(String::from);
        }
        Ok(items)
    }

    pub async fn ticket(&self, id: u64) -> Result<Ticket, Failure> {
        let t = self.get(&format!("/ticket/{id}")).await?;
        let queue = self.queue(&text(&t["Queue"]["id"])).await?;
        Ok(Ticket {
            id,
            effective: text(&t["EffectiveId"]["id"]).parse().unwrap_or(id),
            subject: text(&t["Subject"]),
            status: text(&t["Status"]),
            queue,
            priority: text(&t["Priority"]),
            fields: t["CustomFields"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| {
                    let values = f["values"].as_array().into_iter().flatten();
                    (text(&f["name"]), values.map(text).collect())
                })
                .collect(),
            owner: text(&t["Owner"]["id"]),
            requestors: names(&t["Requestor"]),
            cc: names(&t["Cc"]),
            admin_cc: names(&t["AdminCc"]),
        })
    }

    /// A queue's name from its ID.
    async fn queue(&self, id: &str) -> Result<String, Failure> {
        if let Some(name) = lock(&self.queues).get(id) {
            return Ok(name.clone());
        }
        let q = self.get(&format!("/queue/{id}")).await?;
        let name = text(&q["Name"]);
        lock(&self.queues).insert(id.to_string(), name.clone());
        Ok(name)
    }

    /// The ticket's transactions after `after`, oldest first.
    pub async fn history(&self, ticket: u64, after: u64) -> Result<Vec<Transaction>, Failure> {
        let items = self
            .pages(&format!(
                "/ticket/{ticket}/history?fields=Type,Field,OldValue,NewValue,Creator"
            ))
            .await?;
        let mut history: Vec<Transaction> = items
            .iter()
            .filter_map(|i| {
                Some(Transaction {
                    id: text(&i["id"]).parse().ok()?,
                    kind: text(&i["Type"]),
                    field: text(&i["Field"]),
                    old: text(&i["OldValue"]),
                    new: text(&i["NewValue"]),
                    creator: text(&i["Creator"]["id"]),
                })
            })
            .filter(|t| t.id > after)
            .collect();
        history.sort_by_key(|t| t.id);
        Ok(history)
    }

    /// A transaction's message: its first text part (plain before HTML) and its files.
    pub async fn message(&self, transaction: u64) -> Result<Message, Failure> {
        let parts = self
            .pages(&format!(
                "/transaction/{transaction}/attachments?fields=ContentType,Content,Filename,\
                 ContentLength"
            ))
            .await?;
        let mut message = Message::default();
        let mut html = None;
        for part in &parts {
            let kind = text(&part["ContentType"]).to_ascii_lowercase();
            let name = text(&part["Filename"]);
            if !name.is_empty() {
                message.files.push(switchboard_ticket_rooms::File {
                    name,
                    size: text(&part["ContentLength"]).parse().unwrap_or(0),
                    content_type: kind,
                    id: Some(text(&part["id"])).filter(|id| !id.is_empty()),
                });
            } else if kind == "text/plain" && message.text.is_empty() {
                message.text = text(&part["Content"]);
            } else if kind == "text/html" && html.is_none() {
                html = Some(text(&part["Content"]));
            }
        }
        if message.text.is_empty()
            && let Some(html) = html
        {
            message.text = switchboard_ticket_rooms::text::html_to_text(&html);
        }
        Ok(message)
    }

    /// An attachment's content.
    pub async fn attachment(&self, id: &str) -> Result<Vec<u8>, Failure> {
        use base64::Engine;
        let a = self.get(&format!("/attachment/{id}")).await?;
        let content: String = text(&a["Content"])
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(content)
            .map_err(|e| Failure::Permanent(format!("RT's attachment {id} is not base64: {e}")))
    }

    /// An RT user by name (or numeric ID).
    pub async fn person(&self, name: &str) -> Result<Person, Failure> {
        if let Some(p) = lock(&self.people).get(name) {
            return Ok(p.clone());
        }
        let u = match self
            .get(&format!(
                "/user/{}",
                url::form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
            ))
            .await
        {
            Ok(u) => u,
            // A requestor RT knows only by address, or a user this token may not see.
            Err(Failure::Permanent(_)) => json!({"Name": name}),
            Err(e) => return Err(e),
        };
        let given = u["CustomFields"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| Some(text(&f["name"])) == self.field)
            .map(|f| text(&f["values"][0]))
            .unwrap_or_default();
        let person = Person {
            name: text(&u["Name"]),
            email: text(&u["EmailAddress"]),
            real_name: text(&u["RealName"]),
            given,
        };
        lock(&self.people).insert(name.to_string(), person.clone());
        Ok(person)
    }

    /// The name of the token's owner (its second part is the user's ID).
    pub async fn token_owner(&self) -> Result<String, Failure> {
        let id = self
            .token
            .expose()
            .split('-')
            .nth(1)
            .filter(|id| id.chars().all(|c| c.is_ascii_digit()))
            .ok_or_else(|| {
                Failure::Permanent(
                    "the token does not name its user: set `user` to the token's RT user".into(),
                )
            })?
            .to_string();
        let person = self.person(&id).await?;
        if person.name.is_empty() || person.name == id {
            return Err(Failure::Permanent(format!(
                "RT does not show user {id}, the token's: set `user`"
            )));
        }
        Ok(person.name)
    }

    /// Writes a comment (`reply`: a reply to the requestors) on a ticket, with a file.
    pub async fn write(
        &self,
        ticket: u64,
        reply: bool,
        content: &str,
        file: Option<&switchboard_ticket_rooms::room::Upload>,
    ) -> Result<(), Failure> {
        use base64::Engine;
        let what = if reply { "correspond" } else { "comment" };
        let mut body = json!({"Content": content, "ContentType": "text/plain"});
        if let Some(file) = file {
            body["Attachments"] = json!([{
                "FileName": file.name,
                "FileType": file.content_type,
                "FileContent": base64::engine::general_purpose::STANDARD.encode(&file.data),
            }]);
        }
        self.call(
            Method::POST,
            &format!("/ticket/{ticket}/{what}"),
            Some(body),
        )
        .await
        .map(drop)
    }

    /// Comments and replies by `user` after transaction `after` whose text is `content`:
    /// whether a write that may have been lost on the way back did reach RT.
    pub async fn wrote(
        &self,
        ticket: u64,
        user: &str,
        after: u64,
        content: &str,
    ) -> Result<bool, Failure> {
        for t in self.history(ticket, after).await? {
            if t.creator == user
                && matches!(t.kind.as_str(), "Comment" | "Correspond")
                && self.message(t.id).await?.text.trim() == content.trim()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The last transaction of a ticket (0: none).
    pub async fn last_transaction(&self, ticket: u64) -> Result<u64, Failure> {
        Ok(self.history(ticket, 0).await?.last().map_or(0, |t| t.id))
    }

    /// When the most recently changed ticket changed (RT's time format), or the epoch.
    pub async fn newest_change(&self) -> Result<String, Failure> {
        let q: String = url::form_urlencoded::byte_serialize(b"id > 0").collect();
        let answer = self
            .get(&format!(
                "/tickets?query={q}&fields=LastUpdated&orderby=LastUpdated&order=DESC&per_page=1"
            ))
            .await?;
        Ok(match answer["items"][0]["LastUpdated"].as_str() {
            Some(t) => rt_time(t),
            None => "1970-01-01 00:00:00".into(),
        })
    }

    /// Tickets changed at or after `since` (RT's `YYYY-MM-DD HH:MM:SS`, UTC) in `queues`
    /// (empty: all): each with when it last changed.
    pub async fn changed_since(
        &self,
        since: &str,
        queues: &[String],
    ) -> Result<Vec<(u64, String)>, Failure> {
        let mut query = format!("LastUpdated >= '{since}'");
        if !queues.is_empty() {
            let any: Vec<String> = queues
                .iter()
                .map(|q| format!("Queue = '{}'", q.replace('\'', "\\'")))
                .collect();
            query = format!("{query} AND ({})", any.join(" OR "));
        }
        let q: String = url::form_urlencoded::byte_serialize(query.as_bytes()).collect();
        let items = self
            .pages(&format!(
                "/tickets?query={q}&fields=LastUpdated&orderby=LastUpdated"
            ))
            .await?;
        Ok(items
            .iter()
            .filter_map(|i| Some((text(&i["id"]).parse().ok()?, text(&i["LastUpdated"]))))
            .collect())
    }
}
