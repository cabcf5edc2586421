//! A small identity server speaking the v2 API as the Matrix specification has it: a
//! client registers with an OpenID token (checked with the real homeserver), accepts the
//! terms, reads the hash details and looks addresses up, hashed. It keeps what it was asked.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use base64::Engine;
use serde_json::{Value, json};
use sha2::Digest;
use warp::Filter;
use warp::http::StatusCode;

const PEPPER: &str = "matrixrocks";
const POLICY: &str = "https://is.example.org/terms/v1";

/// What the identity server holds and was asked.
#[derive(Default)]
pub struct State {
    /// E-mail addresses and the Matrix IDs bound to them.
    pub bindings: BTreeMap<String, String>,
    /// Tokens given, and whose.
    tokens: BTreeMap<String, String>,
    /// Tokens whose owner accepted the terms.
    accepted: HashSet<String>,
    /// Each lookup's addresses and algorithm.
    pub lookups: Vec<(Vec<String>, String)>,
    /// Requests that broke the API's rules, with why.
    pub wrong: Vec<String>,
}

pub type Shared = Arc<Mutex<State>>;

pub fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn reply(status: StatusCode, body: Value) -> warp::reply::Response {
    warp::http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.to_string().into())
        .unwrap_or_default()
}

/// How the v2 API hashes an address.
pub fn hash(email: &str) -> String {
    let digest = sha2::Sha256::digest(format!("{email} email {PEPPER}"));
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}

/// Starts the identity server on a free port; its base URL. `homeserver` answers the
/// OpenID userinfo requests that tell whose a token is.
pub async fn start(state: Shared, homeserver: &str) -> Result<String> {
    let homeserver = homeserver.to_string();
    let route = warp::path!("_matrix" / "identity" / "v2" / ..)
        .and(warp::path::tail())
        .and(warp::method())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::body::bytes())
        .and(warp::any().map(move || (state.clone(), homeserver.clone())))
        .then(
            |tail: warp::path::Tail,
             method: warp::http::Method,
             auth: Option<String>,
             body: bytes::Bytes,
             (state, homeserver): (Shared, String)| async move {
                let path = tail.as_str().to_string();
                let body: Value = serde_json::from_slice(&body).unwrap_or_default();
                if (method.as_str(), path.as_str()) == ("POST", "account/register") {
                    return register(&state, &homeserver, &body).await;
                }
                let mut s = lock(&state);
                let token = auth
                    .as_deref()
                    .and_then(|a| a.strip_prefix("Bearer "))
                    .filter(|t| s.tokens.contains_key(*t))
                    .map(String::from);
                let Some(token) = token else {
                    s.wrong
                        .push(format!("{method} {path} without a valid token"));
                    return reply(
                        StatusCode::UNAUTHORIZED,
                        json!({"errcode": "M_UNAUTHORIZED", "error": "token"}),
                    );
                };
                match (method.as_str(), path.as_str()) {
                    ("GET", "terms") => reply(
                        StatusCode::OK,
                        json!({"policies": {"terms": {"version": "1",
                               "en": {"name": "Terms", "url": POLICY}}}}),
                    ),
                    ("POST", "terms") => {
                        if body["user_accepts"]
                            .as_array()
                            .is_some_and(|a| a.contains(&json!(POLICY)))
                        {
                            s.accepted.insert(token);
                            reply(StatusCode::OK, json!({}))
                        } else {
                            s.wrong.push(format!("POST terms: {body}"));
                            reply(StatusCode::BAD_REQUEST, json!({"errcode": "M_UNKNOWN"}))
                        }
                    }
                    _ if !s.accepted.contains(&token) => reply(
                        StatusCode::FORBIDDEN,
                        json!({"errcode": "M_TERMS_NOT_SIGNED", "error": "accept the terms"}),
                    ),
                    ("GET", "hash_details") => reply(
                        StatusCode::OK,
                        json!({"algorithms": ["none", "sha256"], "lookup_pepper": PEPPER}),
                    ),
                    ("POST", "lookup") => {
                        let addresses: Vec<String> = body["addresses"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|a| a.as_str().map(String::from))
                            .collect();
                        let algorithm = body["algorithm"].as_str().unwrap_or_default().to_string();
                        s.lookups.push((addresses.clone(), algorithm.clone()));
                        if body["pepper"] != PEPPER {
                            return reply(
                                StatusCode::BAD_REQUEST,
                                json!({"errcode": "M_INVALID_PEPPER", "algorithm": "sha256",
                                       "lookup_pepper": PEPPER}),
                            );
                        }
                        let mut mappings = serde_json::Map::new();
                        for (email, user) in &s.bindings {
                            let key = match algorithm.as_str() {
                                "sha256" => hash(email),
                                _ => format!("{email} email"),
                            };
                            if addresses.contains(&key) {
                                mappings.insert(key, json!(user));
                            }
                        }
                        reply(StatusCode::OK, json!({ "mappings": mappings }))
                    }
                    _ => {
                        s.wrong.push(format!("{method} {path}: not in the API"));
                        reply(StatusCode::NOT_FOUND, json!({"errcode": "M_UNRECOGNIZED"}))
                    }
                }
            },
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(warp::serve(route).incoming(listener).run());
    Ok(format!("http://{addr}"))
}

/// `account/register`: the OpenID token is asked of the homeserver; its owner gets a
/// token of this server.
async fn register(state: &Shared, homeserver: &str, body: &Value) -> warp::reply::Response {
    let (Some(token), Some(_server)) = (
        body["access_token"].as_str(),
        body["matrix_server_name"].as_str(),
    ) else {
        lock(state)
            .wrong
            .push(format!("POST account/register: {body}"));
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"errcode": "M_MISSING_PARAMS"}),
        );
    };
    let token: String =
        percent_encoding::utf8_percent_encode(token, percent_encoding::NON_ALPHANUMERIC).collect();
    let userinfo = reqwest::Client::new()
        .get(format!(
            "{homeserver}/_matrix/federation/v1/openid/userinfo?access_token={token}"
        ))
        .send()
        .await;
    let user = match userinfo {
        Ok(r) if r.status().is_success() => r.json::<Value>().await.unwrap_or_default()["sub"]
            .as_str()
            .map(String::from),
        _ => None,
    };
    let Some(user) = user else {
        lock(state)
            .wrong
            .push("an OpenID token the homeserver does not know".into());
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({"errcode": "M_UNAUTHORIZED"}),
        );
    };
    let mut s = lock(state);
    let mine = format!("is-token-{}", s.tokens.len());
    s.tokens.insert(mine.clone(), user);
    reply(StatusCode::OK, json!({ "token": mine }))
}
