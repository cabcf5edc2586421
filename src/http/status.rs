//! The operator's page `/status`: each source's queues, what failed or was set aside and
//! why, a button that puts it back in line, and the homeserver's state. Server-rendered
//! HTML, no script; a retry is a form POST carrying the page's token, refused from other
//! sites.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

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

/// `GET /status` and `POST /status` (a retry).
pub(super) fn routes(
    state: Arc<HttpState>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let with_state = warp::any().map(move || state.clone());
    let guarded = warp::path!("status")
        .and(with_state)
        .and(warp::addr::remote())
        .and(warp::header::optional::<String>("authorization"));
    let show = guarded.clone().and(warp::get()).and(warp::query()).then(
        |state: Arc<HttpState>,
         remote: Option<SocketAddr>,
         auth: Option<String>,
         query: HashMap<String, String>| async move {
            match allowed(&state, remote, auth.as_deref()) {
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
             remote: Option<SocketAddr>,
             auth: Option<String>,
             site: Option<String>,
             form: HashMap<String, String>| async move {
                match allowed(&state, remote, auth.as_deref()) {
                    Ok(page) => retry(&state, page, site.as_deref(), &form).await,
                    Err(denied) => denied.reply(),
                }
            },
        );
    show.or(retry).unify()
}

/// The page, if it is on and this client may use it.
fn allowed<'a>(
    state: &'a HttpState,
    remote: Option<SocketAddr>,
    auth: Option<&str>,
) -> Result<&'a StatusPage, Denied> {
    let Some(page) = &state.status_page else {
        return Err(Denied::Off("the status page is off"));
    };
    page.guard.check(remote, auth)?;
    Ok(page)
}

async fn show(state: &HttpState, page: &StatusPage, query: &HashMap<String, String>) -> Response {
    let source = query.get("source").filter(|s| !s.is_empty());
    let ids = page.sources.iter().map(|(i, k)| (i.as_str(), k.as_str()));
    let read = async {
        let sources = operate::sources(&state.store, ids).await?;
        let problems = state
            .store
            .problems(source.map(String::as_str), None, LISTED + 1)
            .await?;
        Ok::<_, crate::store::StoreError>((sources, problems))
    };
    let (database, sources, problems) = match read.await {
        Ok((sources, problems)) => (true, sources, problems),
        Err(error) => {
            warn!(%error, "the status page cannot read the database");
            (false, Vec::new(), Vec::new())
        }
    };
    let more = problems.len() as i64 > LISTED;
    let rows: Vec<Row> = problems.iter().take(LISTED as usize).map(row).collect();
    let notice = query.get("retried").map(|n| match n.as_str() {
        "0" => "Nothing was put back in line: it is no longer waiting.".to_string(),
        "1" => "1 item was put back in line and is being tried again.".to_string(),
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
    html_reply(warp::reply::with_status(warp::reply::html(html), status).into_response())
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
            return Reject(StatusCode::BAD_REQUEST, format!("no such item: {id}")).reply();
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
    info!(?which, items = n, "put back in line from the status page");
    state.engine_wake.notify_one();
    page.outbox_wake.notify_one();
    // Relative, so the page works behind a proxy under any path.
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = http::HeaderValue::from_str(&format!("status?retried={n}")) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    html_reply(resp)
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
