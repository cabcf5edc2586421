//! Zammad's REST API, as far as a ticket's room needs it: the ticket, its articles, users
//! (kept once read), and writing a note.

use std::collections::HashMap;
use std::sync::Mutex;

use reqwest::Method;
use serde_json::{Value, json};
use switchboard_connector::{Failure, Secret};
use switchboard_ticket_rooms::Person;
use switchboard_ticket_rooms::room::Upload;
use tokio::sync::OnceCell;

/// A ticket as the room needs it; people by user ID.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Ticket {
    pub id: u64,
    pub number: String,
    pub title: String,
    pub group: String,
    pub state: String,
    pub priority: String,
    /// 0 or 1 (Zammad's "-" user) when it has none.
    pub owner_id: u64,
    pub customer_id: u64,
    pub updated_by_id: u64,
    /// Every attribute of the ticket as Zammad gives it, custom ones included.
    pub fields: serde_json::Map<String, Value>,
    /// Its tags, when they were asked for.
    pub tags: Option<Vec<String>>,
}

/// One article of a ticket.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Article {
    pub id: u64,
    pub internal: bool,
    pub created_by_id: u64,
    /// Plain text (HTML bodies are turned into text).
    pub text: String,
    pub files: Vec<switchboard_ticket_rooms::File>,
    /// The addresses an e-mail article was copied to.
    pub cc: Vec<String>,
}

/// Zammad's REST API, with one token.
pub(crate) struct Api {
    base: String,
    token: Secret,
    http: reqwest::Client,
    people: Mutex<HashMap<u64, Person>>,
    me: OnceCell<u64>,
    /// The user attribute that holds a user's Matrix ID.
    field: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the cache inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A scalar as text.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// A number, as JSON number or string (Zammad sends sizes as strings).
fn number(v: &Value) -> u64 {
    match v {
        Value::Number(n) => n.as_u64().unwrap_or(0),
        Value::String(s) => s.trim().parse().unwrap_or(0),
        _ => 0,
    }
}

/// The addresses of a header's list (`Ann <ann@example.org>, bob@example.org`).
fn addresses(list: &str) -> Vec<String> {
    list.split(',')
        .filter_map(|part| {
            let part = part.trim();
            let address = match (part.rfind('<'), part.rfind('>')) {
                (Some(open), Some(close)) if open < close => &part[open + 1..close],
                _ => part,
            };
            address.contains('@').then(|| address.trim().to_lowercase())
        })
        .collect()
}

impl Api {
    pub fn new(base: String, token: Secret, http: reqwest::Client, field: Option<String>) -> Api {
        Api {
            base,
            token,
            http,
            people: Mutex::new(HashMap::new()),
            me: OnceCell::new(),
            field,
        }
    }

    /// One request; its JSON answer, failures sorted as everywhere (network and 502-504
    /// pass, other 5xx are refusals, 4xx are permanent). `from`: the login to act as.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        from: Option<&str>,
    ) -> Result<Value, Failure> {
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let response = self.send(method, path, body, from).await?;
        response
            .json()
            .await
            .map_err(|e| Failure::transient(format!("Zammad's answer to {what}: {e}")))
    }

    /// One request; its successful answer, failures sorted as `call` says.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        from: Option<&str>,
    ) -> Result<reqwest::Response, Failure> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header(
                "Authorization",
                format!("Token token={}", self.token.expose()),
            )
            .header("Accept", "application/json");
        if let Some(from) = from {
            request = request.header("From", from);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let response = request
            .send()
            .await
            .map_err(|e| Failure::transient(format!("Zammad: {what}: {}", e.without_url())))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let headers = response.headers().clone();
        let answer: Value = response.json().await.unwrap_or_default();
        let why = answer["error_human"]
            .as_str()
            .or_else(|| answer["error"].as_str())
            .unwrap_or("no reason given");
        let message = match status.as_u16() {
            401 | 403 => format!(
                "Zammad refused the token ({status}) for {what}: {why}; check the token and \
                 its permissions"
            ),
            _ => format!("Zammad answered {status} for {what}: {why}"),
        };
        Err(Failure::from_answer(status, &headers, message))
    }

    async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call(Method::GET, path, None, None).await
    }

    pub async fn ticket(&self, id: u64) -> Result<Ticket, Failure> {
        let t = self.get(&format!("/tickets/{id}?expand=true")).await?;
        Ok(Ticket {
            id,
            number: text(&t["number"]),
            title: text(&t["title"]),
            group: text(&t["group"]),
            state: text(&t["state"]),
            priority: text(&t["priority"]),
            owner_id: number(&t["owner_id"]),
            customer_id: number(&t["customer_id"]),
            updated_by_id: number(&t["updated_by_id"]),
            fields: t.as_object().cloned().unwrap_or_default(),
            tags: None,
        })
    }

    /// The ticket a merged ticket was merged into: its ID and number (Zammad links the two,
    /// the surviving one as the merged one's parent).
    pub async fn merged_into(&self, ticket: u64) -> Result<Option<(u64, String)>, Failure> {
        let answer = self
            .get(&format!(
                "/links?link_object=Ticket&link_object_value={ticket}"
            ))
            .await?;
        let parent = answer["links"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["link_type"] == "parent" && l["link_object"] == "Ticket");
        Ok(parent.map(|l| {
            let id = number(&l["link_object_value"]);
            let number = match text(&answer["assets"]["Ticket"][id.to_string()]["number"]) {
                n if n.is_empty() => id.to_string(),
                n => n,
            };
            (id, number)
        }))
    }

    /// A ticket's tags.
    pub async fn tags(&self, ticket: u64) -> Result<Vec<String>, Failure> {
        let answer = self
            .get(&format!("/tags?object=Ticket&o_id={ticket}"))
            .await?;
        Ok(answer["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect())
    }

    /// The ticket's articles after `after`, oldest first.
    pub async fn articles(&self, ticket: u64, after: u64) -> Result<Vec<Article>, Failure> {
        let answer = self
            .get(&format!("/ticket_articles/by_ticket/{ticket}"))
            .await?;
        let mut articles: Vec<Article> = answer
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|a| {
                let body = text(&a["body"]);
                let html = text(&a["content_type"]).eq_ignore_ascii_case("text/html");
                Article {
                    id: number(&a["id"]),
                    cc: addresses(&text(&a["cc"])),
                    internal: a["internal"] == true,
                    created_by_id: number(&a["created_by_id"]),
                    text: if html {
                        switchboard_ticket_rooms::text::html_to_text(&body)
                    } else {
                        body
                    },
                    files: a["attachments"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                        .iter()
                        .map(|f| switchboard_ticket_rooms::File {
                            name: text(&f["filename"]),
                            size: number(&f["size"]),
                            content_type: text(&f["preferences"]["Content-Type"]),
                            id: Some(format!("{}/{}", number(&a["id"]), number(&f["id"]))),
                        })
                        .collect(),
                }
            })
            .filter(|a| a.id > after)
            .collect();
        articles.sort_by_key(|a| a.id);
        Ok(articles)
    }

    /// A user by ID: their login is their name.
    pub async fn person(&self, id: u64) -> Result<Person, Failure> {
        if let Some(p) = lock(&self.people).get(&id) {
            return Ok(p.clone());
        }
        let u = match self.get(&format!("/users/{id}")).await {
            Ok(u) => u,
            // A user this token may not see: known by number only.
            Err(Failure::Permanent(_)) => json!({"login": format!("user {id}")}),
            Err(e) => return Err(e),
        };
        let real_name = format!("{} {}", text(&u["firstname"]), text(&u["lastname"]))
            .trim()
            .to_string();
        let person = Person {
            name: text(&u["login"]),
            email: text(&u["email"]),
            real_name,
            given: self.field.as_ref().map(|f| text(&u[f])).unwrap_or_default(),
        };
        lock(&self.people).insert(id, person.clone());
        Ok(person)
    }

    /// The ID of the token's own user.
    pub async fn me(&self) -> Result<u64, Failure> {
        self.me
            .get_or_try_init(|| async {
                let me = self.get("/users/me").await?;
                match number(&me["id"]) {
                    0 => Err(Failure::Permanent(
                        "Zammad did not say who the token is".into(),
                    )),
                    id => Ok(id),
                }
            })
            .await
            .copied()
    }

    /// Writes a note on a ticket (as `from`, a login, when given); its article's ID.
    pub async fn write(
        &self,
        ticket: u64,
        body: &str,
        internal: bool,
        from: Option<&str>,
        file: Option<&Upload>,
    ) -> Result<u64, Failure> {
        use base64::Engine;
        let mut note = json!({"ticket_id": ticket, "body": body, "content_type": "text/plain",
                              "type": "note", "internal": internal});
        if let Some(file) = file {
            note["attachments"] = json!([{
                "filename": file.name,
                "data": base64::engine::general_purpose::STANDARD.encode(&file.data),
                "mime-type": file.content_type,
            }]);
        }
        let article = self
            .call(Method::POST, "/ticket_articles", Some(note), from)
            .await?;
        Ok(number(&article["id"]))
    }

    /// An attachment's content; `id` is `<article>/<attachment>`.
    pub async fn attachment(&self, ticket: u64, id: &str) -> Result<Vec<u8>, Failure> {
        let path = format!("/ticket_attachment/{ticket}/{id}");
        let response = self.send(Method::GET, &path, None, None).await?;
        let bytes = response.bytes().await.map_err(|e| {
            Failure::transient(format!("Zammad's attachment {id}: {}", e.without_url()))
        })?;
        Ok(bytes.to_vec())
    }

    /// The first article after `after` whose text is `body`: whether a write whose answer
    /// was lost did reach Zammad.
    pub async fn wrote(&self, ticket: u64, after: u64, body: &str) -> Result<Option<u64>, Failure> {
        Ok(self
            .articles(ticket, after)
            .await?
            .into_iter()
            .find(|a| a.text.trim() == body.trim())
            .map(|a| a.id))
    }

    /// The last article of a ticket (0: none).
    pub async fn last_article(&self, ticket: u64) -> Result<u64, Failure> {
        Ok(self.articles(ticket, 0).await?.last().map_or(0, |a| a.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_s_addresses_are_read() {
        assert_eq!(
            addresses("Ann Agent <Ann@Example.org>, bob@example.org,, not an address"),
            ["ann@example.org", "bob@example.org"]
        );
        assert!(addresses("").is_empty());
    }
}
