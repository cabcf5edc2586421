//! What checking a ticket-system source's config section has in common.

use std::path::Path;

use serde::de::DeserializeOwned;
use switchboard_connector::{Checker, Secret, SourceInfo};

/// How a source's secret is given: its key, where the config holds it (the key, or
/// `<key>_file`), and the problem when neither is given.
pub struct SecretKey<C> {
    pub key: &'static str,
    pub given: fn(&C) -> (Option<&str>, Option<&Path>),
    pub missing: &'static str,
}

/// A ticket-system source's section checked: parsed, the config's own `problems` reported
/// with their keys, its secret read, and, for a source with webhooks, those required to be
/// authenticated (`unauthenticated`: the problem otherwise). `None` when anything is wrong,
/// all of it reported.
pub fn check_section<C: DeserializeOwned>(
    kind: &str,
    source: &SourceInfo,
    section: Option<&serde_json::Value>,
    check: &mut Checker<'_>,
    problems: fn(&C, &SourceInfo) -> Vec<(String, String)>,
    secret: SecretKey<C>,
    unauthenticated: Option<&str>,
) -> Option<(C, Secret)> {
    let Some(section) = section else {
        check.problem("", format!("required for kind = \"{kind}\""));
        return None;
    };
    let config: C = check.parse(section)?;
    let mut ok = true;
    for (key, problem) in problems(&config, source) {
        check.problem(&key, problem);
        ok = false;
    }
    let (value, file) = (secret.given)(&config);
    let read = match check.secret(secret.key, value, file) {
        Ok(Some(read)) => Some(read),
        Ok(None) => {
            check.problem(secret.key, secret.missing);
            None
        }
        Err(_) => None,
    };
    if let Some(problem) = unauthenticated
        && !source.authenticated
    {
        check.source_problem("signature", problem);
        ok = false;
    }
    let read = read?;
    ok.then_some((config, read))
}
