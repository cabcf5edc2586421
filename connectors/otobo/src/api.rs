//! The GenericTicketConnector REST web service, as far as a ticket's room needs it: a
//! session, the ticket with its articles, and writing an article.

use std::collections::BTreeMap;

use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};
use switchboard_connector::{Failure, Secret};
use switchboard_ticket_rooms::Article;
use switchboard_ticket_rooms::room::Upload;

/// A ticket as the room needs it; people by login.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Ticket {
    pub id: u64,
    pub number: String,
    pub title: String,
    pub queue: String,
    pub state: String,
    pub priority: String,
    pub kind: String,
    pub service: String,
    /// Dynamic fields by name.
    pub fields: BTreeMap<String, Value>,
    /// Empty when it has none (the admin user, ID 1, stands for none).
    pub owner: String,
    pub responsible: String,
    pub customer: String,
    pub articles: Vec<Article>,
}

/// The web service, as one agent.
pub(crate) struct Api {
    base: String,
    user: String,
    password: Secret,
    http: reqwest::Client,
    session: tokio::sync::Mutex<Option<String>>,
}

/// A scalar as text (IDs come as strings, some values as numbers).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

fn number(v: &Value) -> u64 {
    text(v).trim().parse().unwrap_or(0)
}

/// A login, empty for the admin user (ID 1) that stands for nobody.
fn login(id: &Value, name: &Value) -> String {
    match number(id) {
        0 | 1 => String::new(),
        _ => text(name),
    }
}

/// A ticket's dynamic fields: TicketGet's `DynamicField` list of `Name` and `Value`, and
/// `DynamicField_<name>` keys.
fn dynamic_fields(t: &Value) -> BTreeMap<String, Value> {
    let listed = t["DynamicField"].as_array().into_iter().flatten();
    let listed = listed.map(|f| (text(&f["Name"]), f["Value"].clone()));
    let keyed = t.as_object().into_iter().flatten().filter_map(|(k, v)| {
        k.strip_prefix("DynamicField_")
            .map(|name| (name.to_string(), v.clone()))
    });
    listed
        .chain(keyed)
        .filter(|(name, _)| !name.is_empty())
        .collect()
}

impl Api {
    pub fn new(base: String, user: String, password: Secret, http: reqwest::Client) -> Api {
        Api {
            base: base.trim_end_matches('/').to_string(),
            user,
            password,
            http,
            session: tokio::sync::Mutex::new(None),
        }
    }

    /// One request; its JSON answer. Transport failures sorted as everywhere; an
    /// operation's error (HTTP 200 with `Error`) is permanent, except a session that ran
    /// out, which is made again once.
    async fn call(&self, method: Method, path: &str, body: Value) -> Result<Value, Failure> {
        let what = format!("{method} {path}");
        for fresh in [false, true] {
            let session = self.session(fresh).await?;
            let url = format!("{}{path}", self.base);
            let request = match method {
                Method::GET => {
                    let mut url = url::Url::parse(&url)
                        .map_err(|e| Failure::Permanent(format!("`url`: {e}")))?;
                    {
                        let mut query = url.query_pairs_mut();
                        query.append_pair("SessionID", &session);
                        for (key, value) in body.as_object().into_iter().flatten() {
                            query.append_pair(key, &text(value));
                        }
                    }
                    self.http.get(url)
                }
                _ => {
                    let mut body = body.clone();
                    body["SessionID"] = json!(session);
                    self.http.request(method.clone(), &url).json(&body)
                }
            };
            let answer = self.send(request, &what).await?;
            match answer["Error"]["ErrorCode"].as_str() {
                None => return Ok(answer),
                Some(code) if code.ends_with("AuthFail") && !fresh => continue,
                Some(code) => {
                    let why = answer["Error"]["ErrorMessage"].as_str().unwrap_or_default();
                    return Err(Failure::Permanent(format!(
                        "the web service refused {what}: {code}: {why}"
                    )));
                }
            }
        }
        Err(Failure::Permanent(format!(
            "the web service refused {what}: the session, made again, does not authenticate"
        )))
    }

    async fn send(&self, request: reqwest::RequestBuilder, what: &str) -> Result<Value, Failure> {
        let response = request
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| Failure::transient(format!("web service: {what}: {}", e.without_url())))?;
        let status = response.status();
        if status.is_success() {
            return response.json().await.map_err(|e| {
                Failure::transient(format!("the web service's answer to {what}: {e}"))
            });
        }
        let message = format!("the web service answered {status} for {what}");
        Err(Failure::from_answer(status, response.headers(), message))
    }

    /// The session, made with the agent's login when there is none (or `fresh`).
    async fn session(&self, fresh: bool) -> Result<String, Failure> {
        let mut session = self.session.lock().await;
        if let (Some(id), false) = (session.as_ref(), fresh) {
            return Ok(id.clone());
        }
        let request = self
            .http
            .post(format!("{}/Session", self.base))
            .json(&json!({"UserLogin": self.user, "Password": self.password.expose()}));
        let answer = self.send(request, "POST /Session").await?;
        let Some(id) = answer["SessionID"].as_str() else {
            let why = answer["Error"]["ErrorMessage"]
                .as_str()
                .unwrap_or("no session given");
            return Err(Failure::Permanent(format!(
                "the web service refused the agent's login: {why}; check `user` and `password`"
            )));
        };
        *session = Some(id.to_string());
        Ok(id.to_string())
    }

    /// The ticket with its articles after `after`, oldest first.
    pub async fn ticket(&self, id: u64, after: u64) -> Result<Ticket, Failure> {
        let answer = self
            .call(
                Method::GET,
                &format!("/Ticket/{id}"),
                json!({"AllArticles": "1", "DynamicFields": "1", "Attachments": "1",
                       "GetAttachmentContents": "0"}),
            )
            .await?;
        let t = &answer["Ticket"][0];
        if t.is_null() {
            return Err(Failure::Permanent(format!(
                "the web service has no ticket {id}"
            )));
        }
        let files = |a: &Value| -> Vec<switchboard_ticket_rooms::File> {
            let article = number(&a["ArticleID"]);
            let list = a["Attachment"].as_array().map(Vec::as_slice);
            list.unwrap_or_default()
                .iter()
                .map(|f| switchboard_ticket_rooms::File {
                    name: text(&f["Filename"]),
                    size: number(&f["FilesizeRaw"]),
                    content_type: text(&f["ContentType"])
                        .split(';')
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                    id: Some(format!("{article}/{}", number(&f["FileID"]))),
                })
                .collect()
        };
        let mut articles: Vec<Article> = t["Article"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|a| {
                let body = text(&a["Body"]);
                let html = text(&a["MimeType"]).eq_ignore_ascii_case("text/html")
                    || text(&a["ContentType"])
                        .to_ascii_lowercase()
                        .starts_with("text/html");
                let author = match text(&a["FromRealname"]) {
                    name if !name.is_empty() => name,
                    _ => text(&a["From"]),
                };
                Article {
                    id: number(&a["ArticleID"]),
                    by: author,
                    internal: text(&a["IsVisibleForCustomer"]) == "0",
                    files: files(a),
                    text: if html {
                        switchboard_ticket_rooms::text::html_to_text(&body)
                    } else {
                        body
                    },
                }
            })
            .filter(|a| a.id > after)
            .collect();
        articles.sort_by_key(|a| a.id);
        Ok(Ticket {
            id,
            number: text(&t["TicketNumber"]),
            title: text(&t["Title"]),
            queue: text(&t["Queue"]),
            state: text(&t["State"]),
            priority: text(&t["Priority"]),
            kind: text(&t["Type"]),
            service: text(&t["Service"]),
            fields: dynamic_fields(t),
            owner: login(&t["OwnerID"], &t["Owner"]),
            responsible: login(&t["ResponsibleID"], &t["Responsible"]),
            customer: text(&t["CustomerUserID"]),
            articles,
        })
    }

    /// Writes an article into the ticket (internal channel, as the agent), with a file;
    /// its ID.
    pub async fn write(
        &self,
        ticket: u64,
        body: &str,
        visible: bool,
        file: Option<&Upload>,
    ) -> Result<u64, Failure> {
        let mut update = json!({"Article": {
            "CommunicationChannel": "Internal",
            "IsVisibleForCustomer": u8::from(visible),
            "SenderType": "agent",
            "Subject": "Matrix",
            "Body": body,
            "ContentType": "text/plain; charset=utf8",
        }});
        if let Some(file) = file {
            update["Attachment"] = json!([{
                "Content": base64::engine::general_purpose::STANDARD.encode(&file.data),
                "ContentType": file.content_type,
                "Filename": file.name,
            }]);
        }
        let answer = self
            .call(Method::PATCH, &format!("/Ticket/{ticket}"), update)
            .await?;
        Ok(number(&answer["ArticleID"]))
    }

    /// An attachment's content; `id` is `<article>/<file>`. The web service gives files
    /// only with their ticket: the ticket is read with every file.
    pub async fn attachment(&self, ticket: u64, id: &str) -> Result<Vec<u8>, Failure> {
        let (article, file) = id.split_once('/').unwrap_or((id, ""));
        let answer = self
            .call(
                Method::GET,
                &format!("/Ticket/{ticket}"),
                json!({"AllArticles": "1", "Attachments": "1", "GetAttachmentContents": "1"}),
            )
            .await?;
        let articles = answer["Ticket"][0]["Article"].as_array().map(Vec::as_slice);
        let content = articles
            .unwrap_or_default()
            .iter()
            .filter(|a| text(&a["ArticleID"]) == article)
            .flat_map(|a| {
                a["Attachment"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
            })
            .find(|f| text(&f["FileID"]) == file)
            .map(|f| text(&f["Content"]))
            .ok_or_else(|| Failure::Permanent(format!("the ticket has no file {id}")))?;
        base64::engine::general_purpose::STANDARD
            .decode(content.trim())
            .map_err(|e| Failure::Permanent(format!("file {id} is not base64: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_fields_come_listed_or_keyed() {
        let t = json!({
            "DynamicField": [{"Name": "Chat", "Value": "yes"}, {"Name": "Tags", "Value": ["a", "b"]}],
            "DynamicField_ContractType": "Premium",
            "Title": "not a field",
        });
        let fields = dynamic_fields(&t);
        assert_eq!(
            fields,
            BTreeMap::from([
                ("Chat".to_string(), json!("yes")),
                ("ContractType".to_string(), json!("Premium")),
                ("Tags".to_string(), json!(["a", "b"])),
            ])
        );
    }
}
