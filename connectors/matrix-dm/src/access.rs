//! Who may open requests: allow and deny lists of users and homeservers.

use schemars::JsonSchema;
use serde::Deserialize;

/// Allow and deny lists. An entry is a user ID (`@alice:example.org`), a homeserver
/// (`example.org`) or every homeserver under a domain (`*.example.org`). Deny wins; an empty
/// allow list allows everyone not denied.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Access {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

impl Access {
    /// Whether `user_id` may open a request.
    pub fn allows(&self, user_id: &str) -> bool {
        let hit = |list: &[String]| list.iter().any(|p| matches(p, user_id));
        !hit(&self.deny) && (self.allow.is_empty() || hit(&self.allow))
    }

    /// The entries that are neither a user ID nor a server pattern, for config checks.
    pub fn invalid_entries(&self) -> impl Iterator<Item = &str> {
        self.allow
            .iter()
            .chain(&self.deny)
            .map(String::as_str)
            .filter(|p| !valid_pattern(p))
    }
}

/// The homeserver part of a user ID.
pub fn server_of(user_id: &str) -> Option<&str> {
    user_id.split_once(':').map(|(_, server)| server)
}

fn matches(pattern: &str, user_id: &str) -> bool {
    if pattern.starts_with('@') {
        return pattern == user_id;
    }
    let Some(server) = server_of(user_id) else {
        return false;
    };
    match pattern.strip_prefix("*.") {
        Some(domain) => server
            .strip_suffix(domain)
            .is_some_and(|sub| sub.ends_with('.')),
        None => server.eq_ignore_ascii_case(pattern),
    }
}

fn valid_pattern(p: &str) -> bool {
    if p.starts_with('@') {
        return switchboard_connector::is_matrix_user_id(p);
    }
    let domain = p.strip_prefix("*.").unwrap_or(p);
    !domain.is_empty()
        && domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(allow: &[&str], deny: &[&str]) -> Access {
        Access {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn empty_lists_allow_everyone() {
        assert!(access(&[], &[]).allows("@anyone:anywhere.org"));
    }

    #[test]
    fn deny_wins_over_allow() {
        let a = access(&["example.org"], &["@mallory:example.org"]);
        assert!(a.allows("@alice:example.org"));
        assert!(!a.allows("@mallory:example.org"));
        assert!(!a.allows("@bob:other.org"));
    }

    #[test]
    fn subdomains() {
        let a = access(&["*.example.org"], &[]);
        assert!(a.allows("@a:matrix.example.org"));
        assert!(!a.allows("@a:example.org"));
        assert!(!a.allows("@a:notexample.org"));
        let d = access(&[], &["*.spam.net", "evil.com"]);
        assert!(!d.allows("@x:hs.spam.net"));
        assert!(!d.allows("@x:EVIL.com"));
        assert!(d.allows("@x:good.com"));
    }

    #[test]
    fn invalid_entries_are_named() {
        let a = access(
            &["@Alice:example.org", "example.org", "bad domain"],
            &["*."],
        );
        let bad: Vec<&str> = a.invalid_entries().collect();
        assert_eq!(bad, ["@Alice:example.org", "bad domain", "*."]);
    }
}
