//! The means of finding a person's Matrix ID that ask someone: the homeserver (by e-mail
//! address, through its admin API) and an identity server (`/_matrix/identity/v2/lookup`,
//! the address hashed). Answers, found or not, are kept for a while.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use sha2::Digest;
use switchboard_connector::{Failure, Matrix};
use tracing::warn;

use crate::people::{Means, Member, PeopleConfig, Person};

/// How long an answer is kept: someone who registers is found after this long.
const KEEP: Duration = Duration::from_secs(600);

/// An answer (a Matrix ID or none) and when it came.
type Kept = (Option<String>, Instant);

/// Asks the homeserver and identity servers for people's Matrix IDs.
pub struct Lookup {
    http: reqwest::Client,
    /// Answers by means and address, with when they came.
    answers: Mutex<HashMap<(Means, String), Kept>>,
    /// The identity servers' tokens by server.
    tokens: tokio::sync::Mutex<HashMap<String, String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the answers inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What asking gave: an answer (a Matrix ID or none), or a failure to ask that is not
/// worth waiting for (the means is not set up right: told in the log, taken as no answer).
enum Asked {
    Answer(Option<String>),
    Unusable(String),
}

impl Lookup {
    pub fn new(http: reqwest::Client) -> Lookup {
        Lookup {
            http,
            answers: Mutex::new(HashMap::new()),
            tokens: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// A person with their Matrix ID, by the first of `people`'s means that gives one.
    /// A homeserver or identity server that cannot be reached fails the read (it is tried
    /// again); one that refuses is told in the log and gives no answer.
    pub async fn member<R: PartialEq>(
        &self,
        people: &PeopleConfig<R>,
        matrix: &dyn Matrix,
        person: Person,
    ) -> Result<Member, Failure> {
        let email = person.email.trim().to_lowercase();
        for means in people.order() {
            let found = match means {
                Means::Homeserver if people.homeserver && email.contains('@') => {
                    self.ask(means, &email, async || homeserver(matrix, &email).await)
                        .await?
                }
                Means::IdentityServer if email.contains('@') => match &people.identity_server {
                    Some(server) => {
                        let key = format!("{server} {email}");
                        self.ask(means, &key, async || {
                            self.identity(matrix, server, &email).await
                        })
                        .await?
                    }
                    None => None,
                },
                means => people.matrix_id_by(means, &person),
            };
            if found.is_some() {
                return Ok(Member {
                    person,
                    matrix: found,
                });
            }
        }
        Ok(Member {
            person,
            matrix: None,
        })
    }

    /// A kept answer, or `ask`'s (kept).
    async fn ask(
        &self,
        means: Means,
        key: &str,
        ask: impl AsyncFnOnce() -> Result<Asked, Failure>,
    ) -> Result<Option<String>, Failure> {
        let slot = (means, key.to_string());
        if let Some((answer, at)) = lock(&self.answers).get(&slot)
            && at.elapsed() < KEEP
        {
            return Ok(answer.clone());
        }
        let answer = match ask().await? {
            Asked::Answer(answer) => answer,
            Asked::Unusable(why) => {
                warn!(?means, %why, "cannot look people up this way");
                None
            }
        };
        lock(&self.answers).insert(slot, (answer.clone(), Instant::now()));
        Ok(answer)
    }

    /// Asks an identity server for the Matrix ID bound to an e-mail address, hashed as its
    /// `hash_details` ask. A token it no longer takes is made again once.
    async fn identity(
        &self,
        matrix: &dyn Matrix,
        server: &str,
        email: &str,
    ) -> Result<Asked, Failure> {
        let base = server.trim_end_matches('/');
        for fresh in [false, true] {
            let token = match self.token(matrix, base, fresh).await? {
                Ok(token) => token,
                Err(why) => return Ok(Asked::Unusable(why)),
            };
            let details = self
                .call(reqwest::Method::GET, &token, base, "hash_details", None)
                .await?;
            let details = match details {
                Reply::Ok(details) => details,
                Reply::Unauthorized if !fresh => continue,
                Reply::Refused(why) | Reply::Unusable(why) => return Ok(Asked::Unusable(why)),
                Reply::Unauthorized => {
                    return Ok(Asked::Unusable("the server refuses its own token".into()));
                }
            };
            let pepper = details["lookup_pepper"].as_str().unwrap_or_default();
            let algorithms = details["algorithms"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let (address, algorithm) = if algorithms.iter().any(|a| a == "sha256") {
                let digest = sha2::Sha256::digest(format!("{email} email {pepper}"));
                let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
                (hash, "sha256")
            } else if algorithms.iter().any(|a| a == "none") {
                (format!("{email} email"), "none")
            } else {
                return Ok(Asked::Unusable(format!(
                    "{base} offers no hashing this client knows: {details}"
                )));
            };
            let body = json!({"addresses": [address], "algorithm": algorithm, "pepper": pepper});
            match self
                .call(reqwest::Method::POST, &token, base, "lookup", Some(body))
                .await?
            {
                Reply::Ok(found) => {
                    let id = found["mappings"][&address].as_str().map(String::from);
                    return Ok(Asked::Answer(
                        id.filter(|id| switchboard_connector::is_matrix_user_id(id)),
                    ));
                }
                Reply::Unauthorized if !fresh => continue,
                Reply::Unauthorized => {
                    return Ok(Asked::Unusable("the server refuses its own token".into()));
                }
                Reply::Refused(why) | Reply::Unusable(why) => return Ok(Asked::Unusable(why)),
            }
        }
        Ok(Asked::Unusable("no answer".into()))
    }

    /// The identity server's token for the bot: registered with an OpenID token from the
    /// homeserver, its terms accepted. `Err`: the server will not give one.
    async fn token(
        &self,
        matrix: &dyn Matrix,
        base: &str,
        fresh: bool,
    ) -> Result<Result<String, String>, Failure> {
        let mut tokens = self.tokens.lock().await;
        if let (Some(token), false) = (tokens.get(base), fresh) {
            return Ok(Ok(token.clone()));
        }
        let openid = matrix.openid_token().await?;
        let token = match self
            .call(
                reqwest::Method::POST,
                "",
                base,
                "account/register",
                Some(openid),
            )
            .await?
        {
            Reply::Ok(answer) => match answer["token"].as_str() {
                Some(token) => token.to_string(),
                None => return Ok(Err(format!("{base} gave no token: {answer}"))),
            },
            Reply::Refused(why) | Reply::Unusable(why) => return Ok(Err(why)),
            Reply::Unauthorized => {
                return Ok(Err(format!("{base} refused the bot's OpenID token")));
            }
        };
        self.accept_terms(base, &token).await?;
        tokens.insert(base.to_string(), token.clone());
        Ok(Ok(token))
    }

    /// Accepts every policy of the server's terms (whoever configured the server for
    /// Switchboard accepted them).
    async fn accept_terms(&self, base: &str, token: &str) -> Result<(), Failure> {
        let Reply::Ok(terms) = self
            .call(reqwest::Method::GET, token, base, "terms", None)
            .await?
        else {
            return Ok(());
        };
        let urls: Vec<Value> = terms["policies"]
            .as_object()
            .into_iter()
            .flatten()
            .flat_map(|(_, policy)| {
                let languages = policy.as_object().into_iter().flatten();
                languages.filter_map(|(_, l)| l.get("url").cloned())
            })
            .collect();
        if !urls.is_empty() {
            let body = json!({ "user_accepts": urls });
            self.call(reqwest::Method::POST, token, base, "terms", Some(body))
                .await?;
        }
        Ok(())
    }

    /// One request to an identity server's `/_matrix/identity/v2/<path>`.
    async fn call(
        &self,
        method: reqwest::Method,
        token: &str,
        base: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Reply, Failure> {
        let what = format!("{method} {base}/_matrix/identity/v2/{path}");
        let mut request = self
            .http
            .request(method, format!("{base}/_matrix/identity/v2/{path}"));
        if !token.is_empty() {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Failure::transient(format!("{what}: {}", e.without_url())))?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or_default();
        Ok(match status.as_u16() {
            200..=299 => Reply::Ok(answer),
            401 => Reply::Unauthorized,
            500..=599 => {
                return Err(Failure::transient(format!("{what}: answered {status}")));
            }
            403 => Reply::Refused(format!("{what}: refused: {answer}")),
            _ => Reply::Unusable(format!("{what}: answered {status}: {answer}")),
        })
    }
}

/// An identity server's answer.
enum Reply {
    Ok(Value),
    Unauthorized,
    Refused(String),
    Unusable(String),
}

/// Asks the homeserver which user has this e-mail address.
async fn homeserver(matrix: &dyn Matrix, email: &str) -> Result<Asked, Failure> {
    match matrix.user_by_email(email).await {
        Ok(found) => Ok(Asked::Answer(found)),
        Err(Failure::Permanent(why)) => Ok(Asked::Unusable(why)),
        Err(e) => Err(e),
    }
}
