//! Checks what the schema cannot see (cross-references, exclusive choices, files), reads
//! `*_file` secrets, and has each connector check its own section.

use std::collections::BTreeMap;
use std::sync::Arc;

use switchboard_connector::config::secret_or_file;
use switchboard_connector::{Checked, Checker, Kind, SourceInfo};

use super::{Config, Connectors, MatrixConfig, MatrixLogin, Secret, Secrets, SourceConfig};

/// Checks what the schema cannot (cross-references, exclusive choices, files) and reads
/// `*_file` secrets.
pub(super) fn validate(c: &Config, err: &mut dyn FnMut(&str, String)) -> (Secrets, Connectors) {
    let mut s = Secrets {
        database_url: secret_or_file(
            "database.url",
            c.database.url.as_ref(),
            c.database.url_file.as_deref(),
            err,
        ),
        data_secret: secret_or_file(
            "data_secret",
            c.data_secret.as_ref(),
            c.data_secret_file.as_deref(),
            err,
        ),
        ..Secrets::default()
    };
    let kinds = crate::registry::kinds();
    let mut connectors: BTreeMap<String, (SourceInfo, Checked)> = BTreeMap::new();
    if let Some(url) = &s.database_url {
        let u = url.expose();
        if !(u.starts_with("sqlite:") || u.starts_with("postgres:") || u.starts_with("postgresql:"))
        {
            err(
                "database.url",
                "must start with sqlite: or postgres:".into(),
            );
        }
    }

    s.matrix_login = check_matrix(&c.matrix, err);

    s.metrics_password = check_login(
        "metrics",
        c.metrics.username.as_deref(),
        c.metrics.password.as_ref(),
        c.metrics.password_file.as_deref(),
        err,
    );
    s.status_page_password = check_login(
        "status_page",
        c.status_page.username.as_deref(),
        c.status_page.password.as_ref(),
        c.status_page.password_file.as_deref(),
        err,
    );
    if c.status_page.enabled
        && s.status_page_password.is_none()
        && c.status_page.allow_ips.is_empty()
    {
        err(
            "status_page",
            "the page can retry failed actions: set `username` and `password`, \
             `allow_ips`, or both"
                .into(),
        );
    }
    if c.http.body_limit == 0 {
        err("http.body_limit", "must be more than 0".into());
    }

    for (id, src) in &c.sources {
        check_intake(id, src, &mut s, err);
        if let Some((info, checked)) = check_connector(c, &kinds, id, src, err) {
            connectors.insert(id.clone(), (info, checked));
        }
    }
    for (name, kind) in &kinds {
        let infos: Vec<SourceInfo> = c
            .sources
            .iter()
            .filter(|(_, s)| s.kind == *name)
            .map(|(id, s)| source_info(c, id, s))
            .collect();
        let mine: Vec<(&SourceInfo, Option<&Checked>)> = infos
            .iter()
            .map(|info| (info, connectors.get(&info.id).map(|(_, checked)| checked)))
            .collect();
        kind.check_together(&mine, &mut *err);
    }
    check_rooms(c, &kinds, &connectors, err);
    check_follows(c, &kinds, &connectors, err);
    check_rules(c, err);
    (s, Connectors(connectors))
}

/// A page's basic auth login (`table.username`, `table.password` or `password_file`): its
/// password, when both are given; an error when only one is.
fn check_login(
    table: &str,
    username: Option<&str>,
    password: Option<&Secret>,
    password_file: Option<&std::path::Path>,
    err: &mut dyn FnMut(&str, String),
) -> Option<Secret> {
    let secret = secret_or_file(&format!("{table}.password"), password, password_file, err);
    if username.is_some() != secret.is_some() {
        err(table, "`username` and `password` go together".into());
        return None;
    }
    if username == Some("") || secret.as_ref().is_some_and(|s| s.expose().is_empty()) {
        err(table, "`username` and `password` must not be empty".into());
        return None;
    }
    secret
}

/// The homeserver, the bot's user and exactly one way to log in.
fn check_matrix(m: &MatrixConfig, err: &mut dyn FnMut(&str, String)) -> Option<MatrixLogin> {
    if !matches!(m.homeserver.scheme(), "http" | "https") {
        err("matrix.homeserver", "must be an http or https URL".into());
    }
    let user_ok = if m.user.starts_with('@') {
        switchboard_connector::is_matrix_user_id(&m.user)
    } else {
        !m.user.is_empty() && !m.user.contains(':')
    };
    if !user_ok {
        err(
            "matrix.user",
            format!(
                "`{}` is neither a user ID (@bot:example.org) nor a localpart",
                m.user
            ),
        );
    }
    let logins = [
        (
            "matrix.password",
            secret_or_file(
                "matrix.password",
                m.password.as_ref(),
                m.password_file.as_deref(),
                err,
            )
            .map(MatrixLogin::Password),
        ),
        (
            "matrix.access_token",
            secret_or_file(
                "matrix.access_token",
                m.access_token.as_ref(),
                m.access_token_file.as_deref(),
                err,
            )
            .map(MatrixLogin::AccessToken),
        ),
        (
            "matrix.shared_secret",
            secret_or_file(
                "matrix.shared_secret",
                m.shared_secret.as_ref(),
                m.shared_secret_file.as_deref(),
                err,
            )
            .map(MatrixLogin::SharedSecret),
        ),
    ];
    let mut login = None;
    let given: Vec<_> = logins.into_iter().filter(|(_, l)| l.is_some()).collect();
    match given.len() {
        0 => err(
            "matrix",
            "give one of `password`, `access_token` or `shared_secret` (or its `*_file`)".into(),
        ),
        1 => login = given.into_iter().next().and_then(|(_, l)| l),
        _ => err(
            given[1].0,
            format!("give only one way to log in; `{}` is set too", given[0].0),
        ),
    }
    if matches!(login, Some(MatrixLogin::SharedSecret(_))) && !m.user.starts_with('@') {
        err(
            "matrix.user",
            "shared-secret login needs the full user ID (@bot:example.org)".into(),
        );
    }
    if m.concurrency == 0 {
        err("matrix.concurrency", "must be at least 1".into());
    }
    login
}

/// How intake authenticates a source's webhooks: its ID, signature, URL secret and basic
/// authentication, with their secrets read.
fn check_intake(id: &str, src: &SourceConfig, s: &mut Secrets, err: &mut dyn FnMut(&str, String)) {
    let key = format!("sources.{id}");
    if id.is_empty()
        || !id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
    {
        err(
            &key,
            "a source ID may hold only letters, digits, `-` and `_`".into(),
        );
    }
    if let Some(sig) = &src.signature {
        let k = format!("{key}.signature.secret");
        match secret_or_file(&k, sig.secret.as_ref(), sig.secret_file.as_deref(), err) {
            Some(secret) if secret.expose().is_empty() => {
                err(&k, "must not be empty".into());
            }
            Some(secret) => {
                s.signatures.insert(id.to_string(), secret);
            }
            None => err(
                &format!("{key}.signature"),
                "needs `secret` or `secret_file`".into(),
            ),
        }
        if http::HeaderName::from_bytes(sig.header.as_bytes()).is_err() {
            err(
                &format!("{key}.signature.header"),
                "not a valid header name".into(),
            );
        }
    }
    let k = format!("{key}.path_secret");
    match secret_or_file(
        &k,
        src.path_secret.as_ref(),
        src.path_secret_file.as_deref(),
        err,
    ) {
        Some(secret)
            if secret.expose().len() < 16
                || !secret
                    .expose()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
        {
            err(&k, "must be at least 16 letters, digits, `-` or `_`".into());
        }
        Some(secret) => {
            s.path_secrets.insert(id.to_string(), secret);
        }
        None => {}
    }
    if let Some(auth) = &src.basic_auth {
        let k = format!("{key}.basic_auth.password");
        match secret_or_file(
            &k,
            auth.password.as_ref(),
            auth.password_file.as_deref(),
            err,
        ) {
            Some(p) if !p.expose().is_empty() && !auth.username.is_empty() => {
                s.basic_auth
                    .insert(id.to_string(), (auth.username.clone(), p));
            }
            _ => err(
                &format!("{key}.basic_auth"),
                "needs a `username` and a `password` (or `password_file`)".into(),
            ),
        }
    }
}

/// A source's connector section, checked by its kind; a section of another kind is named.
fn check_connector(
    c: &Config,
    kinds: &BTreeMap<&'static str, Arc<dyn Kind>>,
    id: &str,
    src: &SourceConfig,
    err: &mut dyn FnMut(&str, String),
) -> Option<(SourceInfo, Checked)> {
    let key = format!("sources.{id}");
    let mut out = None;
    if let Some(kind) = kinds.get(src.kind.as_str()) {
        let info = source_info(c, id, src);
        let mut check = Checker::new(id, kind.name(), &mut *err);
        if let Some(checked) = kind.check(&info, src.sections.get(kind.name()), &mut check) {
            out = Some((info, checked));
        }
    } else {
        let known: Vec<&str> = kinds.keys().copied().collect();
        err(
            &format!("{key}.kind"),
            format!("no kind `{}`; the kinds are {}", src.kind, known.join(", ")),
        );
    }
    for section in src.sections.keys().filter(|s| **s != src.kind) {
        err(
            &format!("{key}.{section}"),
            format!(
                "options of kind `{section}`, but this source is `{}`",
                src.kind
            ),
        );
    }
    out
}

/// The sync hands a room's events to the one source it belongs to: two sources that hear
/// Matrix cannot both name a room as their own.
fn check_rooms(
    c: &Config,
    kinds: &BTreeMap<&'static str, Arc<dyn Kind>>,
    connectors: &BTreeMap<String, (SourceInfo, Checked)>,
    err: &mut dyn FnMut(&str, String),
) {
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    for (id, (_, checked)) in connectors {
        let kind = &kinds[c.sources[id].kind.as_str()];
        if !kind.listens(checked) {
            continue;
        }
        for (key, room) in kind.rooms(checked) {
            let key = format!("sources.{id}.{}.{key}", kind.name());
            match owners.get(&room) {
                Some(first) if !first.starts_with(&format!("sources.{id}.")) => err(
                    &key,
                    format!("the room {room} is `{first}`'s already: a room belongs to one source"),
                ),
                Some(_) => {}
                None => {
                    owners.insert(room, key);
                }
            }
        }
    }
}

/// A source follows sources that exist, other than itself, of a kind that publishes.
fn check_follows(
    c: &Config,
    kinds: &BTreeMap<&'static str, Arc<dyn Kind>>,
    connectors: &BTreeMap<String, (SourceInfo, Checked)>,
    err: &mut dyn FnMut(&str, String),
) {
    for (id, (_, checked)) in connectors {
        let kind = &kinds[c.sources[id].kind.as_str()];
        for (key, followed) in kind.follows(checked) {
            let key = format!("sources.{id}.{}.{key}", kind.name());
            match c.sources.get(&followed) {
                None => err(&key, format!("no source `{followed}` is configured")),
                Some(_) if followed == *id => err(&key, "a source cannot follow itself".into()),
                Some(other)
                    if !kinds
                        .get(other.kind.as_str())
                        .is_some_and(|k| k.publishes()) =>
                {
                    err(
                        &key,
                        format!(
                            "`{followed}` is a `{}` source, which has nothing to follow",
                            other.kind
                        ),
                    )
                }
                Some(_) => {}
            }
        }
    }
}

/// Rules name configured sources, have actions, and their templates compile.
fn check_rules(c: &Config, err: &mut dyn FnMut(&str, String)) {
    let env = minijinja::Environment::new();
    for (i, rule) in c.rules.iter().enumerate() {
        let key = format!("rules.{i}");
        if let Some(src) = &rule.source
            && !c.sources.contains_key(src)
        {
            err(
                &format!("{key}.source"),
                format!("no source `{src}` is configured"),
            );
        }
        if rule.actions.is_empty() {
            err(
                &format!("{key}.actions"),
                "a rule needs at least one action".into(),
            );
        }
        for (j, action) in rule.actions.iter().enumerate() {
            let akey = format!("{key}.actions.{j}");
            for (field, tpl) in action.templates() {
                if let Err(e) = env.template_from_str(tpl) {
                    err(&format!("{akey}.{field}"), format!("bad template: {e}"));
                }
            }
        }
    }
}

/// What a source's connector is told about it.
fn source_info(c: &Config, id: &str, src: &SourceConfig) -> SourceInfo {
    SourceInfo {
        id: id.to_string(),
        authenticated: src.signature.is_some()
            || src.path_secret.is_some()
            || src.path_secret_file.is_some()
            || src.basic_auth.is_some(),
        bot: c.matrix.user.clone(),
        link_create: src.link_create,
    }
}
