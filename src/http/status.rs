//! The operator's page `/status`: each source's queues, what failed or was set aside and
//! why, a button that puts it back in line, and the homeserver's state. Server-rendered
//! HTML, no script; a retry is a form POST carrying the page's token, refused from other
//! sites.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::sync::Notify;
use tracing::{info, warn};
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{Denied, Guard, HttpState, Reject};
use crate::operate;
use crate::store::{Problem, Retry};

/// At most this many failed or set-aside items are listed, newest first.
const LISTED: i64 = 100;

/// The page's settings and its template.
pub struct StatusPage {
    guard: Guard,
    /// Each source's ID and kind, in the config's order.
    sources: Vec<(String, String)>,
    homeserver: String,
    /// Wakes the outbox worker after a retry.
    outbox_wake: Arc<Notify>,
    /// What each retry form carries: another site cannot read it off the page.
    token: String,
    templates: minijinja::Environment<'static>,
}

impl StatusPage {
    pub fn new(
        guard: Guard,
        sources: Vec<(String, String)>,
        homeserver: String,
        outbox_wake: Arc<Notify>,
    ) -> StatusPage {
        let mut templates = minijinja::Environment::new();
        // A `.html` name escapes every value for HTML.
        templates
            .add_template("status.html", include_str!("status.html"))
            .expect("the status page's template parses");
        StatusPage {
            guard,
            sources,
            homeserver,
            outbox_wake,
            token: hex::encode(rand::random::<[u8; 32]>()),
            templates,
        }
    }
}

/// What the page shows.
#[derive(Serialize)]
struct Page<'a> {
    /// When the page was made (UTC).
    now: String,
    homeserver: &'a str,
    homeserver_up: bool,
    /// Whether the database answered; the rest is empty if not.
    database: bool,
    sources: Vec<operate::SourceStatus>,
    /// The source the list of failures is narrowed to, if any.
    source: Option<&'a str>,
    problems: Vec<Row<'a>>,
    /// Whether more than `listed` wait.
    more: bool,
    listed: i64,
    token: &'a str,
    /// What the last retry did.
    notice: Option<String>,
}

/// A failed or set-aside item as the page lists it.
#[derive(Serialize)]
struct Row<'a> {
    id: &'a str,
    when: String,
    source: &'a str,
    ticket: &'a str,
    kind: &'a str,
    state: &'a str,
    tries: i64,
    error: &'a str,
}

/// Who asks, as the page's guard sees it.
struct Caller {
    remote: Option<SocketAddr>,
    authorization: Option<String>,
    host: Option<String>,
    path: warp::path::FullPath,
}

impl Caller {
    /// The user name the request logs in with, if any (for the log).
    fn user(&self) -> Option<String> {
        use base64::Engine as _;
        let credentials = super::basic_credentials(self.authorization.as_deref());
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        Some(text.split_once(':')?.0.to_string())
    }
}

/// `GET /status` and `POST /status` (a retry).
pub(super) fn routes(
    state: Arc<HttpState>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let with_state = warp::any().map(move || state.clone());
    let caller = warp::addr::remote()
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("host"))
        .and(warp::path::full())
        .map(|remote, authorization, host, path| Caller {
            remote,
            authorization,
            host,
            path,
        });
    let guarded = warp::path!("status").and(with_state).and(caller);
    let show = guarded.clone().and(warp::get()).and(warp::query()).then(
        |state: Arc<HttpState>, caller: Caller, query: HashMap<String, String>| async move {
            if caller.path.as_str().ends_with('/') {
                // The page's links are relative to `status`, without the slash.
                return redirect(StatusCode::PERMANENT_REDIRECT, "../status");
            }
            match allowed(&state, &caller) {
                Ok(page) => show(&state, page, &query).await,
                Err(denied) => denied.reply(),
            }
        },
    );
    let retry = guarded
        .and(warp::post())
        .and(warp::header::optional::<String>("sec-fetch-site"))
        .and(warp::body::content_length_limit(4096))
        .and(warp::body::form())
        .then(
            |state: Arc<HttpState>,
             caller: Caller,
             site: Option<String>,
             form: HashMap<String, String>| async move {
                match allowed(&state, &caller) {
                    Ok(page) => retry(&state, page, &caller, site.as_deref(), &form).await,
                    Err(denied) => denied.reply(),
                }
            },
        );
    // Every answer of the page, refusals too, with the page's headers.
    show.or(retry).unify().map(html_reply)
}

/// The page, if it is on and this caller may use it. Without a login, only at an address
/// (`127.0.0.1:8080`, `[::1]:8080`) or `localhost`: a site that points a name of its own at
/// the page's address (DNS rebinding) would otherwise be the page's origin in a browser.
fn allowed<'a>(state: &'a HttpState, caller: &Caller) -> Result<&'a StatusPage, Denied> {
    let Some(page) = &state.status_page else {
        return Err(Denied::Off("the status page is off"));
    };
    page.guard
        .check(caller.remote, caller.authorization.as_deref())?;
    if page.guard.auth.is_none() && !caller.host.as_deref().is_some_and(is_address) {
        return Err(Denied::Host);
    }
    Ok(page)
}

/// Whether a `Host` header names an IP address or `localhost` (with or without a port).
fn is_address(host: &str) -> bool {
    let name = host
        .rsplit_once(':')
        .filter(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(name, _)| name);
    let bare = name.strip_prefix('[').and_then(|n| n.strip_suffix(']'));
    bare.unwrap_or(name).parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
}

fn redirect(status: StatusCode, location: &str) -> Response {
    let mut resp = status.into_response();
    if let Ok(v) = http::HeaderValue::from_str(location) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp
}

async fn show(state: &HttpState, page: &StatusPage, query: &HashMap<String, String>) -> Response {
    let source = query.get("source").filter(|s| !s.is_empty());
    if let Some(source) = source
        && !page.sources.iter().any(|(id, _)| id == source)
    {
        return Reject(StatusCode::NOT_FOUND, format!("no source `{source}`")).reply();
    }
    let ids = page.sources.iter().map(|(i, k)| (i.as_str(), k.as_str()));
    let read = async {
        let sources = operate::sources(&state.store, ids).await?;
        let problems = state
            .store
            .problems(source.map(String::as_str), None, LISTED + 1)
            .await?;
        Ok::<_, crate::store::StoreError>((sources, problems))
    };
    // A database that does not answer is said at once, not after the pool's timeout.
    let read = tokio::time::timeout(Duration::from_secs(5), read);
    let (database, sources, problems) = match read.await {
        Ok(Ok((sources, problems))) => (true, sources, problems),
        Ok(Err(error)) => {
            warn!(%error, "the status page cannot read the database");
            (false, Vec::new(), Vec::new())
        }
        Err(_) => {
            warn!("the status page cannot read the database: no answer within 5 s");
            (false, Vec::new(), Vec::new())
        }
    };
    let more = problems.len() as i64 > LISTED;
    let rows: Vec<Row> = problems.iter().take(LISTED as usize).map(row).collect();
    let notice = query
        .get("retried")
        .and_then(|n| n.parse::<u64>().ok())
        .map(|n| match n {
            0 => "Nothing was put back in line: it is no longer waiting.".to_string(),
            1 => "1 item was put back in line and is being tried again.".to_string(),
            n => format!("{n} items were put back in line and are being tried again."),
        });
    let context = Page {
        now: operate::utc(crate::store::now_ms()),
        homeserver: &page.homeserver,
        homeserver_up: state.metrics.homeserver_up.get() == 1,
        database,
        sources,
        source: source.map(String::as_str),
        problems: rows,
        more,
        listed: LISTED,
        token: &page.token,
        notice,
    };
    let html = match page
        .templates
        .get_template("status.html")
        .and_then(|t| t.render(minijinja::value::Serde(&context)))
    {
        Ok(html) => html,
        Err(error) => {
            warn!(%error, "cannot render the status page");
            return Reject(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot render the page".into(),
            )
            .reply();
        }
    };
    let status = if database {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    warp::reply::with_status(warp::reply::html(html), status).into_response()
}

fn row(p: &Problem) -> Row<'_> {
    Row {
        id: &p.id,
        when: operate::utc(p.updated_at),
        source: &p.source_id,
        ticket: p.ticket_key.as_deref().unwrap_or(""),
        kind: &p.kind,
        state: &p.state,
        tries: p.tries,
        error: &p.error,
    }
}

/// Puts one item (`id`) or all (`all`, of `source` if given) back in line, then sends the
/// browser back to the page.
async fn retry(
    state: &HttpState,
    page: &StatusPage,
    caller: &Caller,
    site: Option<&str>,
    form: &HashMap<String, String>,
) -> Response {
    // Browsers say where a request comes from; a form on another site may not retry.
    if site.is_some_and(|s| s != "same-origin" && s != "none") {
        return Reject(StatusCode::FORBIDDEN, "a request from another site".into()).reply();
    }
    let token = form.get("token").map_or("", String::as_str);
    if !bool::from(token.as_bytes().ct_eq(page.token.as_bytes())) {
        return Reject(
            StatusCode::FORBIDDEN,
            "the form is out of date: reload the page".into(),
        )
        .reply();
    }
    let which = match (form.get("id"), form.get("all")) {
        (Some(id), None) => Retry::One(id.clone()),
        (None, Some(_)) => Retry::All {
            source: form.get("source").filter(|s| !s.is_empty()).cloned(),
        },
        _ => {
            return Reject(
                StatusCode::BAD_REQUEST,
                "name one item (`id`) or all (`all`)".into(),
            )
            .reply();
        }
    };
    let n = match state.store.retry_problems(&which).await {
        Ok(n) => n,
        Err(crate::store::StoreError::ItemId(id)) => {
            return Reject(StatusCode::BAD_REQUEST, format!("no such item: {id:?}")).reply();
        }
        Err(error) => {
            warn!(%error, "cannot put items back in line");
            return Reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database does not answer".into(),
            )
            .reply();
        }
    };
    info!(
        ?which,
        items = n,
        client = ?caller.remote,
        user = caller.user().as_deref().unwrap_or("-"),
        "put back in line from the status page"
    );
    state.engine_wake.notify_one();
    page.outbox_wake.notify_one();
    // Relative, so the page works behind a proxy under any path.
    redirect(StatusCode::SEE_OTHER, &format!("status?retried={n}"))
}

/// A page's answer, kept out of caches and frames, with nothing to load from elsewhere.
fn html_reply(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    for (name, value) in [
        (
            http::header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
        (http::header::CACHE_CONTROL, "no-store"),
        (http::header::REFERRER_POLICY, "no-referrer"),
        (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        h.insert(name, http::HeaderValue::from_static(value));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_and_localhost_are_addresses() {
        for host in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]:8080",
            "[::1]",
            "localhost:8080",
            "LOCALHOST",
        ] {
            assert!(is_address(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "localhost.evil.example:80",
            "",
            ":8080",
            "::1",
        ] {
            assert!(!is_address(host), "{host}");
        }
    }

    /// What other systems answered (an error, a ticket key) is shown as text, never as
    /// markup.
    #[test]
    fn what_others_wrote_is_escaped() {
        let page = StatusPage::new(
            Guard {
                auth: None,
                allow: Vec::new(),
                realm: "test",
            },
            Vec::new(),
            "http://hs.example/".into(),
            Arc::new(Notify::new()),
        );
        let context = Page {
            now: operate::utc(0),
            homeserver: &page.homeserver,
            homeserver_up: false,
            database: true,
            sources: Vec::new(),
            source: Some("a\"b"),
            problems: vec![Row {
                id: "action:1",
                when: operate::utc(0),
                source: "tickets",
                ticket: "<b>T</b>",
                kind: "post",
                state: "set_aside",
                tries: 5,
                error: "<script>alert(1)</script>",
            }],
            more: false,
            listed: LISTED,
            token: &page.token,
            notice: None,
        };
        let html = page
            .templates
            .get_template("status.html")
            .and_then(|t| t.render(minijinja::value::Serde(&context)))
            .expect("renders");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;"), "{html}");
        assert!(html.contains("&lt;b&gt;T&lt;"), "{html}");
        assert!(
            !html.contains("<script>") && !html.contains("a\"b"),
            "{html}"
        );
        assert!(html.contains("<td>set aside</td>"), "{html}");
        assert!(html.contains("does not answer"), "{html}");
        assert_eq!(
            html.matches(&format!("value=\"{}\"", page.token)).count(),
            2
        );
    }
}
