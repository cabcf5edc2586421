//! The HTTP listener: webhook intake, `/link` redirects, metrics, the status page and
//! health. A webhook is answered 2xx only after its delivery is in the store.

mod status;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use hmac::{Hmac, Mac};
use http::{HeaderMap, StatusCode};
use serde_json::json;
use subtle::ConstantTimeEq;
use switchboard_connector::{Connector, EventKind, RejectReason, Route, RouteRequest, TicketEvent};
use tokio::sync::Notify;
use tracing::{debug, warn};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::config::{Secret, SignatureAlgorithm, SignatureConfig};
use crate::metrics::Metrics;
use crate::store::Store;

pub use status::StatusPage;

/// One configured source as intake sees it.
pub struct Source {
    pub id: String,
    /// The source's connector: its webhook intake (`Connector::webhook`) takes the body.
    pub connector: Arc<dyn Connector>,
    pub signature: Option<(SignatureConfig, Secret)>,
    /// The secret the URL must end with (`/hooks/<source>/<secret>`).
    pub path_secret: Option<Secret>,
    /// The basic authentication the sender must give (username, password).
    pub basic_auth: Option<(String, Secret)>,
    pub link_create: bool,
}

/// Shared state of the handlers.
pub struct HttpState {
    /// Connectors' routes of their own, by path.
    pub routes: HashMap<Vec<String>, Route>,
    pub store: Store,
    pub sources: HashMap<String, Source>,
    pub metrics: Metrics,
    /// Wakes the engine after a delivery is stored.
    pub engine_wake: Arc<Notify>,
    pub body_limit: u64,
    pub link_base: String,
    pub link_wait: Duration,
    /// Who may read `/metrics`; None: nobody, it is off.
    pub metrics_guard: Option<Guard>,
    /// The operator's page `/status`, if enabled.
    pub status_page: Option<StatusPage>,
}

/// Who may use a page: clients of these networks (any, if none), with this basic auth login
/// (none needed, if none).
pub struct Guard {
    pub auth: Option<(String, Secret)>,
    pub allow: Vec<ipnet::IpNet>,
    /// The realm a browser shows when it asks for the login.
    pub realm: &'static str,
}

impl Guard {
    /// Lets the request through, or says why not: another network, no or a wrong login.
    fn check(&self, remote: Option<SocketAddr>, authorization: Option<&str>) -> Result<(), Denied> {
        if !self.allow.is_empty() {
            // An IPv4 client of a dual-stack listener arrives as ::ffff:a.b.c.d.
            let allowed = remote.is_some_and(|r| {
                let ip = r.ip().to_canonical();
                self.allow.iter().any(|n| n.contains(&ip))
            });
            if !allowed {
                return Err(Denied::Address);
            }
        }
        if let Some((user, password)) = &self.auth {
            let expected = base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{}", password.expose()));
            let given = basic_credentials(authorization);
            if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
                return Err(Denied::Login(self.realm));
            }
        }
        Ok(())
    }
}

/// The credentials of a `Basic` authorization header (its scheme in any case), base64 as
/// sent; empty for any other header or none.
fn basic_credentials(authorization: Option<&str>) -> &str {
    authorization
        .and_then(|a| a.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .map_or("", |(_, credentials)| credentials.trim())
}

/// Why a protected page turned a request away.
enum Denied {
    /// The page is off: why, in words.
    Off(&'static str),
    /// The client's address is not on the list.
    Address,
    /// No login, or a wrong one, for this realm.
    Login(&'static str),
    /// A page without a login asked for by a name, not an address.
    Host,
}

impl Denied {
    /// 404 for a page that is off, 403 from another network, 401 asking for the login.
    fn reply(self) -> Response {
        match self {
            Denied::Off(why) => Reject(StatusCode::NOT_FOUND, why.into()).reply(),
            Denied::Address => Reject(
                StatusCode::FORBIDDEN,
                "not allowed from this address".into(),
            )
            .reply(),
            Denied::Host => Reject(
                StatusCode::FORBIDDEN,
                "without a login the page answers only at an IP address or localhost".into(),
            )
            .reply(),
            Denied::Login(realm) => {
                let mut resp =
                    Reject(StatusCode::UNAUTHORIZED, "authentication required".into()).reply();
                if let Ok(v) = http::HeaderValue::from_str(&format!("Basic realm=\"{realm}\"")) {
                    resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
                }
                resp
            }
        }
    }
}

/// An error answer: a status and a reason for the caller, as JSON.
struct Reject(StatusCode, String);

impl Reject {
    fn reply(self) -> Response {
        json_reply(self.0, json!({ "error": self.1 }))
    }
}

fn json_reply(status: StatusCode, body: serde_json::Value) -> Response {
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// All routes.
pub fn routes(
    state: Arc<HttpState>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let with_state = {
        let s = state.clone();
        warp::any().map(move || s.clone())
    };
    // Path first, then method: an unknown path is 404, a known one with the wrong method 405.
    let hooks = warp::path("hooks")
        .and(warp::path::param::<String>())
        .and(
            warp::path::param::<String>()
                .map(Some)
                .or(warp::any().map(|| None))
                .unify(),
        )
        .and(warp::path::end())
        .and(warp::post())
        .and(with_state.clone())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            |source: String,
             secret: Option<String>,
             state: Arc<HttpState>,
             headers: HeaderMap,
             body| async move {
                let limit = state.body_limit;
                let mut response = hook(&state, &source, secret.as_deref(), &headers, body, limit)
                    .await
                    .unwrap_or_else(Reject::reply);
                if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    // The body was not read to its end: the connection cannot carry another
                    // request.
                    response.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                response
            },
        );
    let link = warp::path!("link" / String / String)
        .and(warp::get())
        .and(with_state.clone())
        .then(
            |source: String, key: String, state: Arc<HttpState>| async move {
                link(&state, &source, &key)
                    .await
                    .unwrap_or_else(Reject::reply)
            },
        );
    // Connectors' own pages, by their exact path.
    let own = warp::get()
        .and(warp::path::full())
        .and(with_state.clone())
        .and(warp::query::<HashMap<String, String>>())
        .and_then(
            |path: warp::path::FullPath, state: Arc<HttpState>, query| async move {
                let segments: Vec<String> = path
                    .as_str()
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        percent_encoding::percent_decode_str(s)
                            .decode_utf8_lossy()
                            .into_owned()
                    })
                    .collect();
                let Some(route) = state.routes.get(&segments) else {
                    return Err(warp::reject::not_found());
                };
                let reply = (route.handler)(RouteRequest { query }).await;
                let status =
                    StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let mut response = warp::reply::with_status(reply.body, status).into_response();
                if let Ok(v) = http::HeaderValue::from_str(reply.content_type) {
                    response.headers_mut().insert(http::header::CONTENT_TYPE, v);
                }
                Ok(response)
            },
        );
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_state.clone())
        .and(warp::addr::remote())
        .and(warp::header::optional::<String>("authorization"))
        .map(
            |state: Arc<HttpState>, remote: Option<SocketAddr>, auth: Option<String>| {
                metrics(&state, remote, auth.as_deref())
            },
        );
    let status_page = status::routes(state.clone());
    let health = warp::path!("health")
        .and(warp::get())
        .map(|| json_reply(StatusCode::OK, json!({ "status": "ok" })));
    let ready = warp::get().and(warp::path!("ready")).and(with_state).then(
        |state: Arc<HttpState>| async move {
            let db = state.store.ping().await;
            let hs = state.metrics.homeserver_up.get() == 1;
            let status = if db && hs {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_reply(status, json!({ "database": db, "homeserver": hs }))
        },
    );
    hooks
        .or(link)
        .unify()
        .or(own)
        .unify()
        .or(metrics)
        .unify()
        .or(status_page)
        .unify()
        .or(health)
        .unify()
        .or(ready)
        .unify()
        .recover(|rej: warp::Rejection| async move {
            let (status, reason) = if rej.is_not_found() {
                (StatusCode::NOT_FOUND, "no such path".to_string())
            } else if rej.find::<warp::reject::MethodNotAllowed>().is_some() {
                (StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into())
            } else {
                (StatusCode::BAD_REQUEST, "bad request".into())
            };
            Ok::<_, Infallible>(json_reply(status, json!({ "error": reason })))
        })
        .unify()
}

/// Binds the listener; returns the bound address and the server future.
pub async fn serve(
    state: Arc<HttpState>,
    addr: SocketAddr,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let server = warp::serve(routes(state)).incoming(listener).run();
    Ok((bound, server))
}

async fn hook<S, B>(
    state: &HttpState,
    source_id: &str,
    path_secret: Option<&str>,
    headers: &HeaderMap,
    body: S,
    limit: u64,
) -> Result<Response, Reject>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let Some(source) = state
        .sources
        .get(source_id)
        .filter(|s| s.connector.webhook().is_some())
    else {
        return Err(Reject(
            StatusCode::NOT_FOUND,
            format!("no source `{source_id}` takes webhooks"),
        ));
    };
    let count = |outcome: &str| {
        state
            .metrics
            .webhooks
            .with_label_values(&[source_id, outcome])
            .inc()
    };
    if let Err(reason) = authenticate(source, path_secret, headers) {
        count("rejected_auth");
        return Err(Reject(StatusCode::UNAUTHORIZED, reason));
    }
    let body = match read_body(headers, body, limit).await {
        Ok(b) => b,
        Err(r) => {
            count(if r.0 == StatusCode::PAYLOAD_TOO_LARGE {
                "rejected_size"
            } else {
                "rejected_malformed"
            });
            return Err(r);
        }
    };
    if let Some((sig, secret)) = &source.signature
        && let Err(reason) = verify_signature(sig, secret, headers, &body)
    {
        count("rejected_signature");
        return Err(Reject(StatusCode::UNAUTHORIZED, reason));
    }
    let delivery = source
        .connector
        .webhook()
        .map_or_else(
            || {
                Err(RejectReason::Unmapped(
                    "this source takes no webhooks".into(),
                ))
            },
            |hook| hook.accept(headers, &body),
        )
        .and_then(|d| switchboard_connector::check_delivery(&d).map(|()| d))
        .map_err(|r| {
            let (status, outcome) = match &r {
                RejectReason::Signature(_) => (StatusCode::UNAUTHORIZED, "rejected_signature"),
                RejectReason::Malformed(_) => (StatusCode::BAD_REQUEST, "rejected_malformed"),
                _ => (StatusCode::UNPROCESSABLE_ENTITY, "rejected_unmapped"),
            };
            count(outcome);
            Reject(status, r.to_string())
        })?;
    let events = serde_json::to_string(&delivery.events)
        .map_err(|e| Reject(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match state
        .store
        .accept(source_id, &delivery.dedupe_key, &events)
        .await
    {
        Ok(acc) => {
            if !acc.duplicate {
                state.engine_wake.notify_one();
            }
            count(if acc.duplicate {
                "duplicate"
            } else {
                "accepted"
            });
            let mut answer = delivery.answer;
            answer.insert("id".into(), json!(acc.id));
            answer.insert("duplicate".into(), json!(acc.duplicate));
            Ok(json_reply(
                StatusCode::OK,
                serde_json::Value::Object(answer),
            ))
        }
        Err(error) => {
            warn!(source = source_id, %error, "cannot store a webhook");
            count("unavailable");
            Err(Reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage unavailable; retry later".into(),
            ))
        }
    }
}

/// The URL secret and basic authentication a source asks of its sender, compared in
/// constant time.
fn authenticate(
    source: &Source,
    path_secret: Option<&str>,
    headers: &HeaderMap,
) -> Result<(), String> {
    let same = |a: &str, b: &str| bool::from(a.as_bytes().ct_eq(b.as_bytes()));
    match (&source.path_secret, path_secret) {
        (Some(want), Some(got)) if same(want.expose(), got) => {}
        (Some(_), Some(_)) => return Err("the URL's secret is wrong".into()),
        (Some(_), None) => {
            return Err("this source takes its secret in the URL: /hooks/<source>/<secret>".into());
        }
        (None, Some(_)) => return Err("this source takes no secret in the URL".into()),
        (None, None) => {}
    }
    if let Some((user, password)) = &source.basic_auth {
        use base64::Engine as _;
        let given = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or("basic authentication is required")?;
        let (u, p) = given.split_once(':').unwrap_or((&given, ""));
        // Both compared, so the time does not tell which one was wrong.
        if !(same(u, user) & same(p, password.expose())) {
            return Err("wrong username or password".into());
        }
    }
    Ok(())
}

/// How much of a body over the limit is read (and thrown away) before the `413`, so that a
/// sender that writes its whole body before it reads the answer gets the answer instead of a
/// connection closed under it; and for how long at most.
const DRAIN_MAX: u64 = 32 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(15);

/// Reads the body, refusing more than `limit` bytes whether or not a length was announced.
/// A body announced too large is refused before it is sent when the sender waits for
/// `100 Continue`; otherwise what the sender writes is read up to `DRAIN_MAX` and the
/// `413` follows (and the connection is closed after it).
async fn read_body<S, B>(headers: &HeaderMap, mut body: S, limit: u64) -> Result<Bytes, Reject>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let too_large = || {
        Reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {limit} bytes"),
        )
    };
    let announced = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit) {
        let waits = headers
            .get(http::header::EXPECT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if !waits {
            drain(&mut body, limit).await;
        }
        return Err(too_large());
    }
    let mut buf = BytesMut::with_capacity(announced.unwrap_or(4096).min(limit) as usize);
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|e| Reject(StatusCode::BAD_REQUEST, format!("reading the body: {e}")))?;
        if buf.len() as u64 + chunk.remaining() as u64 > limit {
            drain(&mut body, limit).await;
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            buf.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

/// Reads and drops the rest of a body, up to `DRAIN_MAX` (or `limit`, if larger) bytes and
/// `DRAIN_TIME`.
async fn drain<S, B>(body: &mut S, limit: u64)
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let max = DRAIN_MAX.max(limit);
    let read = async {
        let mut seen = 0u64;
        while let Some(Ok(chunk)) = body.next().await {
            seen += chunk.remaining() as u64;
            if seen > max {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

/// Checks an HMAC over the raw body in constant time, before anything parses it.
fn verify_signature(
    sig: &SignatureConfig,
    secret: &Secret,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), String> {
    let value = headers
        .get(sig.header.as_str())
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| format!("missing signature header `{}`", sig.header))?;
    let hex_part = value
        .trim()
        .strip_prefix(sig.prefix.as_str())
        .ok_or_else(|| format!("the signature must start with `{}`", sig.prefix))?;
    let given = hex::decode(hex_part).map_err(|_| "the signature is not hex".to_string())?;
    let ok = match sig.algorithm {
        SignatureAlgorithm::Sha256 => {
            Hmac::<sha2::Sha256>::new_from_slice(secret.expose().as_bytes()).map(|mut m| {
                m.update(body);
                m.verify_slice(&given).is_ok()
            })
        }
        SignatureAlgorithm::Sha1 => Hmac::<sha1::Sha1>::new_from_slice(secret.expose().as_bytes())
            .map(|mut m| {
                m.update(body);
                m.verify_slice(&given).is_ok()
            }),
    }
    .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err("the signature does not match".into())
    }
}

async fn link(state: &HttpState, source_id: &str, raw_key: &str) -> Result<Response, Reject> {
    let key = percent_encoding::percent_decode_str(raw_key)
        .decode_utf8()
        .map_err(|_| Reject(StatusCode::BAD_REQUEST, "the key is not UTF-8".into()))?
        .into_owned();
    let Some(source) = state.sources.get(source_id) else {
        return Err(Reject(
            StatusCode::NOT_FOUND,
            format!("no source `{source_id}`"),
        ));
    };
    let db_err = |error: crate::store::StoreError| {
        warn!(%error, "link lookup failed");
        Reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage unavailable".into(),
        )
    };
    if let Some(l) = state.store.link(source_id, &key).await.map_err(db_err)? {
        return Ok(redirect(&state.link_base, &l.room_id));
    }
    if !source.link_create {
        return Err(Reject(
            StatusCode::NOT_FOUND,
            format!("ticket `{key}` has no room yet"),
        ));
    }
    // Ask for the room the same way a webhook would, so the rules decide what it looks like.
    let mut event = TicketEvent::new(key.clone(), EventKind::Opened);
    event.payload = json!({ "via": "link" });
    let events = serde_json::to_string(&[event])
        .map_err(|e| Reject(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    state
        .store
        .accept(source_id, &format!("link:{key}"), &events)
        .await
        .map_err(db_err)?;
    state.engine_wake.notify_one();
    let deadline = tokio::time::Instant::now() + state.link_wait;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(l) = state.store.link(source_id, &key).await.map_err(db_err)? {
            return Ok(redirect(&state.link_base, &l.room_id));
        }
    }
    debug!(source = source_id, "room not ready within the link wait");
    Err(Reject(
        StatusCode::GATEWAY_TIMEOUT,
        "the room is being created; try again in a moment".into(),
    ))
}

fn redirect(base: &str, room_id: &str) -> Response {
    let target = format!("{base}{room_id}");
    let mut resp = json_reply(
        StatusCode::FOUND,
        json!({ "room_id": room_id, "location": target }),
    );
    if let Ok(v) = http::HeaderValue::from_str(&target) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp
}

fn metrics(state: &HttpState, remote: Option<SocketAddr>, auth: Option<&str>) -> Response {
    let Some(guard) = &state.metrics_guard else {
        return Denied::Off("metrics are disabled").reply();
    };
    if let Err(denied) = guard.check(remote, auth) {
        return denied.reply();
    }
    let mut resp = warp::reply::with_status(state.metrics.render(), StatusCode::OK).into_response();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source whose authentication is all that is tested.
    struct Intakeless;
    impl Connector for Intakeless {}

    #[test]
    fn url_secrets_and_basic_auth_are_checked() {
        let source = |path: Option<&str>, basic: Option<(&str, &str)>| Source {
            id: "px".into(),
            connector: Arc::new(Intakeless),
            signature: None,
            path_secret: path.map(Secret::new),
            basic_auth: basic.map(|(u, p)| (u.to_string(), Secret::new(p))),
            link_create: false,
        };
        let none = HeaderMap::new();
        let by_path = source(Some("0123456789abcdef"), None);
        assert!(authenticate(&by_path, Some("0123456789abcdef"), &none).is_ok());
        assert!(authenticate(&by_path, Some("0123456789abcdeF"), &none).is_err());
        assert!(authenticate(&by_path, None, &none).is_err());
        let open = source(None, None);
        assert!(authenticate(&open, None, &none).is_ok());
        assert!(authenticate(&open, Some("anything"), &none).is_err());

        use base64::Engine as _;
        let basic = |v: &str| {
            let mut h = HeaderMap::new();
            let value = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(v)
            );
            h.insert(http::header::AUTHORIZATION, value.parse().expect("header"));
            h
        };
        let by_auth = source(None, Some(("shop", "pw")));
        assert!(authenticate(&by_auth, None, &basic("shop:pw")).is_ok());
        assert!(authenticate(&by_auth, None, &basic("shop:px")).is_err());
        assert!(authenticate(&by_auth, None, &basic("shoP:pw")).is_err());
        assert!(authenticate(&by_auth, None, &none).is_err());
    }

    fn sig() -> (SignatureConfig, Secret) {
        (SignatureConfig::default(), Secret::new("s3cret"))
    }

    fn signed(body: &[u8]) -> HeaderMap {
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").expect("key");
        m.update(body);
        let mut h = HeaderMap::new();
        let v = format!("sha256={}", hex::encode(m.finalize().into_bytes()));
        h.insert("x-signature-256", v.parse().expect("header"));
        h
    }

    #[test]
    fn signatures_are_checked() {
        let (cfg, secret) = sig();
        let body = br#"{"ticket":{"id":1}}"#;
        assert!(verify_signature(&cfg, &secret, &signed(body), body).is_ok());
        assert!(verify_signature(&cfg, &secret, &signed(body), b"{}").is_err());
        assert!(verify_signature(&cfg, &secret, &HeaderMap::new(), body).is_err());
        let mut bad = HeaderMap::new();
        bad.insert("x-signature-256", "sha256=zz".parse().expect("header"));
        assert!(verify_signature(&cfg, &secret, &bad, body).is_err());
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_even_without_a_length() {
        let chunks = futures::stream::iter(vec![
            Ok::<_, warp::Error>(Bytes::from_static(b"12345")),
            Ok(Bytes::from_static(b"67890")),
        ]);
        let r = read_body(&HeaderMap::new(), chunks, 8).await;
        assert!(matches!(r, Err(Reject(StatusCode::PAYLOAD_TOO_LARGE, _))));
        let ok = futures::stream::iter(vec![Ok::<_, warp::Error>(Bytes::from_static(b"1234"))]);
        assert_eq!(
            read_body(&HeaderMap::new(), ok, 8).await.ok().as_deref(),
            Some(&b"1234"[..])
        );
    }

    proptest::proptest! {
        /// Any signature header and body: a yes or a no, never a panic.
        #[test]
        fn any_signature_is_checked(header in "(?s).{0,80}", body in proptest::collection::vec(proptest::num::u8::ANY, 0..128)) {
            let (cfg, secret) = sig();
            let mut h = HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(&header) {
                h.insert("x-signature-256", v);
            }
            proptest::prop_assert!(verify_signature(&cfg, &secret, &h, &body).is_err() || header.starts_with("sha256="));
        }

        /// Any URL secret and authorization header: a yes or a no, never a panic.
        #[test]
        fn any_credentials_are_checked(path in proptest::option::of("(?s).{0,40}"), auth in "(?s).{0,60}") {
            let source = Source {
                id: "px".into(),
                connector: Arc::new(Intakeless),
                signature: None,
                path_secret: Some(Secret::new("0123456789abcdef")),
                basic_auth: Some(("u".into(), Secret::new("p"))),
                link_create: false,
            };
            let mut h = HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(&auth) {
                h.insert(http::header::AUTHORIZATION, v);
            }
            let _ = authenticate(&source, path.as_deref(), &h);
        }
    }
}
