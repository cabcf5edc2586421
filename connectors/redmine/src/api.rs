//! Redmine's REST API, as far as keeping requests as issues needs it: the issues changed
//! since a time, one issue's journals, creating an issue, writing a note (with a status and
//! files), uploading a file, the statuses, and who the API key belongs to. Every request is
//! counted by what it is for (`redmine_requests_total`).

use prometheus::IntCounterVec;
use reqwest::Method;
use serde_json::{Value, json};
use switchboard_connector::{Failure, Secret};

/// Issues per page of a list (Redmine's most).
const PAGE: u64 = 100;

/// One journal of an issue: a note, changes, or both.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Journal {
    pub id: i64,
    pub user_id: i64,
    pub user: String,
    pub notes: String,
    pub private: bool,
    /// The status it set, if it changed it.
    pub status: Option<i64>,
    /// The status it changed from.
    pub old_status: Option<i64>,
    /// Whether it changed who the issue is assigned to.
    pub assigned: bool,
    /// The subject it gave the issue, if it changed it.
    pub subject: Option<String>,
    /// The files it added: (attachment ID, file name).
    pub files: Vec<(i64, String)>,
}

impl Journal {
    /// A journal as Redmine's JSON gives it.
    fn of(j: &Value) -> Option<Journal> {
        let details = j["details"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let attr = |name: &str| {
            details
                .iter()
                .find(|d| d["property"] == "attr" && d["name"] == name)
        };
        let id_of = |v: &Value| v.as_str().and_then(|s| s.parse().ok());
        let files = details
            .iter()
            .filter(|d| d["property"] == "attachment" && d["new_value"].is_string())
            .filter_map(|d| {
                let id = d["name"].as_str()?.parse().ok()?;
                Some((id, d["new_value"].as_str()?.to_string()))
            })
            .collect();
        Some(Journal {
            files,
            id: j["id"].as_i64()?,
            user_id: j["user"]["id"].as_i64().unwrap_or_default(),
            user: j["user"]["name"].as_str().unwrap_or("someone").to_string(),
            notes: j["notes"].as_str().unwrap_or_default().to_string(),
            private: j["private_notes"].as_bool().unwrap_or(false),
            status: attr("status_id").and_then(|d| id_of(&d["new_value"])),
            old_status: attr("status_id").and_then(|d| id_of(&d["old_value"])),
            assigned: attr("assigned_to_id").is_some(),
            subject: attr("subject").and_then(|d| d["new_value"].as_str().map(String::from)),
        })
    }
}

/// An issue with its journals, attachments and watchers, as its room needs it: `raw` is
/// Redmine's JSON of it (what templates see is made from that).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Issue {
    pub raw: Value,
    /// Oldest first.
    pub journals: Vec<Journal>,
}

/// A Redmine user, as far as finding their Matrix ID goes.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct User {
    pub login: String,
    pub name: String,
    pub mail: String,
    /// Their custom fields by name.
    pub fields: Vec<(String, String)>,
}

/// An issue as a list shows it (`raw`: Redmine's JSON of it).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Changed {
    pub id: i64,
    pub updated_on: String,
    pub raw: Value,
}

/// A status of Redmine's.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Status {
    pub id: i64,
    pub name: String,
    pub closed: bool,
}

/// A file to attach: the token `upload` gave.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Upload {
    pub token: String,
    pub name: String,
    pub content_type: String,
}

/// One Redmine, with one API key.
pub(crate) struct Api {
    base: String,
    key: Secret,
    http: reqwest::Client,
    requests: IntCounterVec,
    source: String,
    /// Redmine's clock as its last answer's `Date` gave it (ms), if it sends one.
    clock: std::sync::Mutex<Option<i64>>,
}

impl Api {
    pub fn new(
        base: &str,
        key: Secret,
        http: reqwest::Client,
        requests: IntCounterVec,
        source: &str,
    ) -> Api {
        Api {
            base: base.trim_end_matches('/').to_string(),
            key,
            http,
            requests,
            source: source.to_string(),
            clock: std::sync::Mutex::new(None),
        }
    }

    /// One call; `purpose` labels its count. The answer's JSON (`null` for none).
    async fn call(
        &self,
        purpose: &str,
        method: Method,
        path: &str,
        body: Option<Body>,
    ) -> Result<Value, Failure> {
        self.requests
            .with_label_values(&[&self.source, purpose])
            .inc();
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("X-Redmine-API-Key", self.key.expose())
            .header("Accept", "application/json");
        request = match body {
            // Without this type Redmine answers a misleading 422.
            Some(Body::Json(v)) => request.json(&v),
            Some(Body::Bytes(b)) => request
                .header("Content-Type", "application/octet-stream")
                .body(b),
            None => request,
        };
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let response = request
            .send()
            .await
            .map_err(|e| Failure::transient(format!("Redmine: {what}: {}", e.without_url())))?;
        let status = response.status();
        if let Some(date) = response
            .headers()
            .get("date")
            .and_then(|d| d.to_str().ok())
            .and_then(http_date_ms)
        {
            *self.clock.lock().unwrap_or_else(|e| e.into_inner()) = Some(date);
        }
        if status.is_success() {
            let bytes = response
                .bytes()
                .await
                .map_err(|e| Failure::transient(format!("Redmine's answer to {what}: {e}")))?;
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(Value::Null);
            }
            let value = serde_json::from_slice(&bytes).map_err(|e| {
                Failure::Refused(format!("Redmine's answer to {what} is not JSON: {e}"))
            })?;
            return Ok(value);
        }
        let headers = response.headers().clone();
        let answer: Value = response.json().await.unwrap_or_default();
        let why = answer["errors"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "no reason given".into());
        let message = match status.as_u16() {
            401 | 403 => format!(
                "Redmine refused the API key ({status}) for {what}: check the key, that REST \
                 is enabled, and the user's rights in the project"
            ),
            _ => format!("Redmine answered {status} for {what}: {why}"),
        };
        Err(Failure::from_answer(status, &headers, message))
    }

    /// Redmine's time now, as its last answer's `Date` said (Switchboard's clock when it
    /// sends none).
    pub fn now_ms(&self) -> i64 {
        self.clock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or_else(switchboard_connector::now_ms)
    }

    /// The API key's user: its ID.
    pub async fn me(&self) -> Result<i64, Failure> {
        let me = self
            .call("user", Method::GET, "/users/current.json", None)
            .await?;
        me["user"]["id"]
            .as_i64()
            .ok_or_else(|| Failure::Refused("Redmine did not say who the API key is".into()))
    }

    pub async fn statuses(&self) -> Result<Vec<Status>, Failure> {
        let list = self
            .call("statuses", Method::GET, "/issue_statuses.json", None)
            .await?;
        Ok(list["issue_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                Some(Status {
                    id: s["id"].as_i64()?,
                    name: s["name"].as_str()?.to_string(),
                    closed: s["is_closed"].as_bool().unwrap_or(false),
                })
            })
            .collect())
    }

    /// The project's issues updated at or after `since` (Redmine's time), oldest change
    /// first, every page.
    pub async fn changed(&self, project: &str, since: &str) -> Result<Vec<Changed>, Failure> {
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let path = format!(
                "/issues.json?project_id={}&status_id=*&sort=updated_on&updated_on=%3E%3D{}\
                 &limit={PAGE}&offset={offset}",
                encode(project),
                encode(since)
            );
            let page = self.call("poll", Method::GET, &path, None).await?;
            let issues = page["issues"].as_array().cloned().unwrap_or_default();
            out.extend(issues.iter().filter_map(|i| {
                Some(Changed {
                    id: i["id"].as_i64()?,
                    updated_on: i["updated_on"].as_str()?.to_string(),
                    raw: i.clone(),
                })
            }));
            offset += issues.len() as u64;
            let total = page["total_count"].as_u64().unwrap_or(0);
            if issues.is_empty() || offset >= total {
                return Ok(out);
            }
        }
    }

    /// An issue's journals, oldest first.
    pub async fn journals(&self, issue: i64) -> Result<Vec<Journal>, Failure> {
        let answer = self
            .call(
                "journals",
                Method::GET,
                &format!("/issues/{issue}.json?include=journals"),
                None,
            )
            .await?;
        Ok(journals_of(&answer["issue"]))
    }

    /// An issue with its journals, attachments and watchers.
    pub async fn issue(&self, id: i64) -> Result<Issue, Failure> {
        let answer = self
            .call(
                "issue",
                Method::GET,
                &format!("/issues/{id}.json?include=journals,attachments,watchers"),
                None,
            )
            .await?;
        Ok(Issue {
            journals: journals_of(&answer["issue"]),
            raw: answer["issue"].clone(),
        })
    }

    /// A user (or a group, whose name is all Redmine gives of it to most).
    pub async fn user(&self, id: i64) -> Result<Option<User>, Failure> {
        let answer = match self
            .call("user", Method::GET, &format!("/users/{id}.json"), None)
            .await
        {
            Ok(answer) => answer,
            Err(Failure::Permanent(_)) => return Ok(None),
            Err(other) => return Err(other),
        };
        let u = &answer["user"];
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        Ok(Some(User {
            login: text(&u["login"]),
            name: format!("{} {}", text(&u["firstname"]), text(&u["lastname"]))
                .trim()
                .to_string(),
            mail: text(&u["mail"]),
            fields: u["custom_fields"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| (text(&f["name"]), text(&f["value"])))
                .collect(),
        }))
    }

    /// An issue's status: whether Redmine counts it as closed.
    pub async fn is_closed(&self, issue: i64) -> Result<bool, Failure> {
        let answer = self
            .call("issue", Method::GET, &format!("/issues/{issue}.json"), None)
            .await?;
        Ok(answer["issue"]["status"]["is_closed"].as_bool() == Some(true))
    }

    /// The newest issue of the project that the API key's user made with this subject.
    pub async fn made_before(&self, project: &str, subject: &str) -> Result<Option<i64>, Failure> {
        let path = format!(
            "/issues.json?project_id={}&author_id=me&status_id=*&sort=id:desc&limit={PAGE}\
             &subject=~{}",
            encode(project),
            encode(subject)
        );
        let page = self.call("issue", Method::GET, &path, None).await?;
        Ok(page["issues"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["subject"] == subject)
            .and_then(|i| i["id"].as_i64()))
    }

    /// Creates an issue; its ID.
    pub async fn create(
        &self,
        project: &str,
        tracker: Option<u64>,
        status: Option<u64>,
        subject: &str,
        description: &str,
    ) -> Result<i64, Failure> {
        let mut issue = json!({
            "project_id": project, "subject": subject, "description": description,
        });
        if let Some(t) = tracker {
            issue["tracker_id"] = t.into();
        }
        if let Some(s) = status {
            issue["status_id"] = s.into();
        }
        let made = self
            .call(
                "create",
                Method::POST,
                "/issues.json",
                Some(Body::Json(json!({ "issue": issue }))),
            )
            .await?;
        made["issue"]["id"]
            .as_i64()
            .ok_or_else(|| Failure::Refused("Redmine did not say which issue it made".into()))
    }

    /// Writes a note (and a status, and files) on an issue; `private`: a private note.
    pub async fn note(
        &self,
        issue: i64,
        notes: &str,
        status: Option<u64>,
        files: &[Upload],
        private: bool,
    ) -> Result<(), Failure> {
        let mut change = json!({ "notes": notes });
        if private {
            change["private_notes"] = true.into();
        }
        if let Some(s) = status {
            change["status_id"] = s.into();
        }
        if !files.is_empty() {
            change["uploads"] = files
                .iter()
                .map(|f| json!({"token": f.token, "filename": f.name, "content_type": f.content_type}))
                .collect();
        }
        self.call(
            "note",
            Method::PUT,
            &format!("/issues/{issue}.json"),
            Some(Body::Json(json!({ "issue": change }))),
        )
        .await?;
        Ok(())
    }

    /// Whether the API key's user wrote exactly this note on the issue after the journal
    /// `after` (0: ever).
    pub async fn wrote(
        &self,
        issue: i64,
        me: i64,
        notes: &str,
        after: i64,
    ) -> Result<bool, Failure> {
        Ok(self
            .journals(issue)
            .await?
            .iter()
            .any(|j| j.id > after && j.user_id == me && j.notes.trim() == notes.trim()))
    }

    /// The issue's newest journal (0: none).
    pub async fn last_journal(&self, issue: i64) -> Result<i64, Failure> {
        let journals = self.journals(issue).await?;
        Ok(journals.last().map_or(0, |j| j.id))
    }

    /// An attachment's bytes and content type; refused beyond `max` bytes.
    pub async fn attachment(&self, id: i64, max: u64) -> Result<(Vec<u8>, String), Failure> {
        let about = self
            .call(
                "file",
                Method::GET,
                &format!("/attachments/{id}.json"),
                None,
            )
            .await?;
        let about = &about["attachment"];
        let size = about["filesize"].as_u64().unwrap_or_default();
        if size > max {
            return Err(Failure::Permanent(format!(
                "attachment {id} has {size} bytes, more than {max}"
            )));
        }
        let url = about["content_url"].as_str().ok_or_else(|| {
            Failure::Refused(format!("Redmine gave no address for attachment {id}"))
        })?;
        let content_type = about["content_type"]
            .as_str()
            .filter(|t| !t.is_empty())
            .unwrap_or("application/octet-stream")
            .to_string();
        self.requests
            .with_label_values(&[&self.source, "file"])
            .inc();
        let response = self
            .http
            .get(url)
            .header("X-Redmine-API-Key", self.key.expose())
            .send()
            .await
            .map_err(|e| {
                Failure::transient(format!("Redmine: attachment {id}: {}", e.without_url()))
            })?;
        let status = response.status();
        if !status.is_success() {
            let headers = response.headers().clone();
            let message = format!("Redmine answered {status} for attachment {id}");
            return Err(Failure::from_answer(status, &headers, message));
        }
        let data = response
            .bytes()
            .await
            .map_err(|e| Failure::transient(format!("Redmine: attachment {id}: {e}")))?;
        Ok((data.to_vec(), content_type))
    }

    /// Uploads a file; the token that attaches it.
    pub async fn upload(
        &self,
        name: &str,
        content_type: &str,
        data: Vec<u8>,
    ) -> Result<Upload, Failure> {
        let answer = self
            .call(
                "upload",
                Method::POST,
                &format!("/uploads.json?filename={}", encode(name)),
                Some(Body::Bytes(data)),
            )
            .await?;
        let token = answer["upload"]["token"]
            .as_str()
            .ok_or_else(|| Failure::Refused("Redmine gave no upload token".into()))?;
        Ok(Upload {
            token: token.to_string(),
            name: name.to_string(),
            content_type: content_type.to_string(),
        })
    }
}

/// An issue's journals (its JSON's), oldest first.
fn journals_of(issue: &Value) -> Vec<Journal> {
    let mut journals: Vec<Journal> = issue["journals"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Journal::of)
        .collect();
    journals.sort_by_key(|j| j.id);
    journals
}

enum Body {
    Json(Value),
    Bytes(Vec<u8>),
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// An HTTP date (`Fri, 04 Dec 2026 20:34:50 GMT`) in Unix milliseconds.
pub(crate) fn http_date_ms(date: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let parts: Vec<&str> = date.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let (y, d): (i64, i64) = (year.parse().ok()?, day.parse().ok()?);
    let m = MONTHS.iter().position(|x| x == month)? as i64 + 1;
    let hms: Vec<i64> = time.split(':').filter_map(|t| t.parse().ok()).collect();
    let [h, mi, s] = hms.as_slice() else {
        return None;
    };
    // Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400) + h * 3600 + mi * 60 + s) * 1000)
}

/// A Unix time in milliseconds as Redmine writes times (`2026-12-04T20:34:50Z`).
pub(crate) fn redmine_time(ms: i64) -> String {
    let [y, mo, d, h, mi, s] = switchboard_connector::utc_fields(ms);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_redmine_writes_them() {
        assert_eq!(redmine_time(1_796_416_490_000), "2026-12-04T20:34:50Z");
        assert_eq!(
            http_date_ms("Fri, 04 Dec 2026 20:34:50 GMT"),
            Some(1_796_416_490_000)
        );
        assert_eq!(
            http_date_ms("Sun, 29 Feb 2032 00:00:01 GMT")
                .map(redmine_time)
                .as_deref(),
            Some("2032-02-29T00:00:01Z")
        );
        assert_eq!(http_date_ms("yesterday"), None);
    }
}
