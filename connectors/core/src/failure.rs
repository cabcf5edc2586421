//! How an action failed, which decides whether and when it is tried again: the worker
//! retries outages without limit, sets aside what keeps being refused, and records what
//! never works.

use std::time::Duration;

use crate::db::DbError;

/// How an action failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Failure {
    /// Worth another try (network, 5xx from a proxy, 429); `retry_after` when the server
    /// said when.
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The far end answered with an error that another try may mend but that is not an
    /// outage (a 500 for this request, a database refusing this row): retried like
    /// `Transient`, and set aside after a number of these.
    Refused(String),
    /// Will never work (4xx other than 429): recorded, not retried.
    Permanent(String),
}

impl Failure {
    /// What went wrong, whether or not it may pass.
    pub fn into_message(self) -> String {
        match self {
            Failure::Permanent(message)
            | Failure::Refused(message)
            | Failure::Transient { message, .. } => message,
        }
    }

    /// A failure that passes by itself (no answer at all: network, timeout).
    pub fn transient(message: impl Into<String>) -> Failure {
        Failure::Transient {
            message: message.into(),
            retry_after: None,
        }
    }

    /// An HTTP answer's status as a failure, with the delay its `Retry-After` header (in
    /// seconds) asks for: see `from_status`.
    pub fn from_answer(
        status: http::StatusCode,
        headers: &http::HeaderMap,
        message: String,
    ) -> Failure {
        let retry_after = headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Failure::from_status(status.as_u16(), message, retry_after)
    }

    /// An HTTP answer's status as a failure: 429, 502, 503 and 504 (overload, a proxy in
    /// front of a server that is down) pass; other 5xx are refusals; the rest is permanent.
    pub fn from_status(status: u16, message: String, retry_after: Option<Duration>) -> Failure {
        match status {
            429 | 502..=504 => Failure::Transient {
                message,
                retry_after,
            },
            500..=599 => Failure::Refused(message),
            _ => Failure::Permanent(message),
        }
    }
}

impl From<DbError> for Failure {
    /// A database that refuses the row is a refusal; one that cannot be reached passes.
    fn from(e: DbError) -> Failure {
        if e.is_refusal() {
            Failure::Refused(e.to_string())
        } else {
            Failure::transient(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        let f = |s| Failure::from_status(s, String::new(), None);
        assert!(matches!(f(429), Failure::Transient { .. }));
        assert!(matches!(f(503), Failure::Transient { .. }));
        assert!(matches!(f(500), Failure::Refused(_)));
        assert!(matches!(f(404), Failure::Permanent(_)));
    }
}
