//! A connector's config section: secrets with `${ENV}` and `*_file`, and a checker that
//! reports each problem under its key, so the service can name the key and its line.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer};

/// A secret value: `${VAR}` parts are replaced from the environment when the file is read.
/// Never printed.
#[derive(Clone, PartialEq, Eq, schemars::JsonSchema)]
#[schemars(with = "String")]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand_env(&raw)
            .map(Secret)
            .map_err(serde::de::Error::custom)
    }
}

/// Replaces `${VAR}` with the variable's value; an unset variable is an error. `$${` is a
/// literal `${`.
pub fn expand_env(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        if rest[..start].ends_with('$') {
            out.push_str(&rest[..start]);
            out.push('{');
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unclosed `${` in value".to_string())?;
        let name = &after[..end];
        let value =
            std::env::var(name).map_err(|_| format!("environment variable `{name}` is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A secret given as a value or as the path of a file holding it (`key_file`); giving both
/// is a problem, reported under `key`. A file's trailing newline is not part of the secret.
pub fn secret_or_file(
    key: &str,
    value: Option<&Secret>,
    file: Option<&Path>,
    err: &mut dyn FnMut(&str, String),
) -> Option<Secret> {
    match (value, file) {
        (Some(_), Some(_)) => {
            err(key, format!("give `{key}` or `{key}_file`, not both"));
            None
        }
        (Some(v), None) => Some(v.clone()),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(text) => Some(Secret(text.trim_end_matches(['\n', '\r']).to_string())),
            Err(e) => {
                err(
                    &format!("{key}_file"),
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        },
        (None, None) => None,
    }
}

/// A problem was found and reported already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reported;

/// Checks one source's connector section and collects its problems, each under its key
/// (relative to the section: `events.0.rooms`), which the service turns into the key's
/// full path and line.
pub struct Checker<'a> {
    /// The source's path: `sources.<id>`.
    source: String,
    /// The section's name within it (the connector's kind).
    section: &'static str,
    report: &'a mut dyn FnMut(&str, String),
}

impl<'a> Checker<'a> {
    pub fn new(
        source_id: &str,
        section: &'static str,
        report: &'a mut dyn FnMut(&str, String),
    ) -> Checker<'a> {
        Checker {
            source: format!("sources.{source_id}"),
            section,
            report,
        }
    }

    /// The full key path of `key` in the section (`""`: the section itself).
    pub fn path(&self, key: &str) -> String {
        match key {
            "" => format!("{}.{}", self.source, self.section),
            k => format!("{}.{}.{k}", self.source, self.section),
        }
    }

    /// A problem with `key` of the section.
    pub fn problem(&mut self, key: &str, message: impl Into<String>) {
        let path = self.path(key);
        (self.report)(&path, message.into());
    }

    /// A problem with a key of the source outside the section (`path_secret`).
    pub fn source_problem(&mut self, key: &str, message: impl Into<String>) {
        let path = format!("{}.{key}", self.source);
        (self.report)(&path, message.into());
    }

    /// The section read into the connector's config type; `None` after reporting why.
    pub fn parse<T: serde::de::DeserializeOwned>(
        &mut self,
        section: &serde_json::Value,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(section) {
            Ok(t) => Some(t),
            Err(e) => {
                let key = dotted(e.path());
                self.problem(&key, e.into_inner().to_string());
                None
            }
        }
    }

    /// A secret held as a plain string (`${VAR}` expanded as for every secret) or in a
    /// file (`<key>_file`). `Err` when a problem was reported; `None` when neither is given
    /// (or the value is empty).
    pub fn secret(
        &mut self,
        key: &str,
        value: Option<&str>,
        file: Option<&Path>,
    ) -> Result<Option<Secret>, Reported> {
        let path = self.path(key);
        let value = match value.map(expand_env) {
            Some(Ok(v)) => Some(Secret(v)),
            Some(Err(e)) => {
                (self.report)(&path, e);
                return Err(Reported);
            }
            None => None,
        };
        let given = value.is_some() || file.is_some();
        let mut failed = false;
        let read = secret_or_file(&path, value.as_ref(), file, &mut |k, m| {
            failed = true;
            (self.report)(k, m)
        });
        match read {
            Some(s) if !s.expose().trim().is_empty() => Ok(Some(s)),
            Some(_) => Ok(None),
            None if given || failed => Err(Reported),
            None => Ok(None),
        }
    }
}

/// A serde path as the config's keys are written: `events.0.rooms`.
fn dotted(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Map { key } => Some(key.clone()),
            Segment::Enum { variant } => Some(variant.clone()),
            Segment::Unknown => None,
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_named_by_their_full_key() {
        let mut seen = Vec::new();
        let mut report = |k: &str, m: String| seen.push((k.to_string(), m));
        let mut check = Checker::new("shop", "shop_kind", &mut report);
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Section {
            url: String,
            events: Vec<u32>,
        }
        let bad = serde_json::json!({"url": "x", "events": [1, "two"]});
        assert!(check.parse::<Section>(&bad).is_none());
        assert_eq!(check.secret("token", None, None), Ok(None));
        assert!(
            check
                .secret("token", None, Some(Path::new("/nonexistent/token")))
                .is_err()
        );
        assert_eq!(seen[0].0, "sources.shop.shop_kind.events.1");
        assert_eq!(seen[1].0, "sources.shop.shop_kind.token_file");
    }
}
