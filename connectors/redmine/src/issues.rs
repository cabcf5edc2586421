//! The `redmine_issues` table: which issue each request of the helpdesk is kept in, and how
//! far its journals have been read.

use sqlx::Row;
use switchboard_connector::{DbError, Host, now_ms};

/// The `request` of an issue taken over whose request has not been heard of yet.
pub(crate) const TAKEN: &str = "thread:";

/// One request's issue.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Issue {
    pub request: String,
    /// `None` until Redmine made it.
    pub issue_id: Option<i64>,
    pub last_journal: i64,
    pub closed: bool,
}

/// The table, for one source.
pub(crate) struct Issues {
    source: String,
}

fn issue(r: &sqlx::any::AnyRow) -> Result<Issue, DbError> {
    Ok(Issue {
        request: r.try_get(0)?,
        issue_id: r.try_get(1)?,
        last_journal: r.try_get(2)?,
        closed: r.try_get::<i64, _>(3)? != 0,
    })
}

impl Issues {
    pub fn new(source: &str) -> Issues {
        Issues {
            source: source.to_string(),
        }
    }

    pub async fn of_request(
        &self,
        host: &dyn Host,
        request: &str,
    ) -> Result<Option<Issue>, DbError> {
        let row = sqlx::query(
            "SELECT request, issue_id, last_journal, closed FROM redmine_issues \
             WHERE source_id = $1 AND request = $2",
        )
        .bind(&self.source)
        .bind(request)
        .fetch_optional(host.pool())
        .await?;
        row.as_ref().map(issue).transpose()
    }

    pub async fn of_issue(&self, host: &dyn Host, id: i64) -> Result<Option<Issue>, DbError> {
        let row = sqlx::query(
            "SELECT request, issue_id, last_journal, closed FROM redmine_issues \
             WHERE source_id = $1 AND issue_id = $2",
        )
        .bind(&self.source)
        .bind(id)
        .fetch_optional(host.pool())
        .await?;
        row.as_ref().map(issue).transpose()
    }

    /// Records that `request` is to have an issue; whether it is new.
    pub async fn expect(&self, host: &dyn Host, request: &str) -> Result<bool, DbError> {
        let done = sqlx::query(
            "INSERT INTO redmine_issues (source_id, request, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&self.source)
        .bind(request)
        .bind(now_ms())
        .execute(host.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records an issue another program kept for the request of a thread (`thread:<root>`),
    /// read up to `last_journal`, until the request is heard of (`adopt`); whether it is new.
    pub async fn take(
        &self,
        host: &dyn Host,
        thread: &str,
        id: i64,
        last_journal: i64,
    ) -> Result<bool, DbError> {
        let done = sqlx::query(
            "INSERT INTO redmine_issues (source_id, request, issue_id, last_journal, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(&self.source)
        .bind(format!("{TAKEN}{thread}"))
        .bind(id)
        .bind(last_journal)
        .bind(now_ms())
        .execute(host.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The issue taken over for the thread `root`, now `request`'s; whether there was one.
    pub async fn adopt(&self, host: &dyn Host, root: &str, request: &str) -> Result<bool, DbError> {
        let done = sqlx::query(
            "UPDATE redmine_issues SET request = $1 WHERE source_id = $2 AND request = $3",
        )
        .bind(request)
        .bind(&self.source)
        .bind(format!("{TAKEN}{root}"))
        .execute(host.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn set_issue(&self, host: &dyn Host, request: &str, id: i64) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE redmine_issues SET issue_id = $1 WHERE source_id = $2 AND request = $3",
        )
        .bind(id)
        .bind(&self.source)
        .bind(request)
        .execute(host.pool())
        .await?;
        Ok(())
    }

    pub async fn set_read(&self, host: &dyn Host, id: i64, journal: i64) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE redmine_issues SET last_journal = $1 \
             WHERE source_id = $2 AND issue_id = $3 AND last_journal < $1",
        )
        .bind(journal)
        .bind(&self.source)
        .bind(id)
        .execute(host.pool())
        .await?;
        Ok(())
    }

    pub async fn set_closed(&self, host: &dyn Host, request: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE redmine_issues SET closed = 1 WHERE source_id = $1 AND request = $2")
            .bind(&self.source)
            .bind(request)
            .execute(host.pool())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_connector::testing::TestHost;

    #[tokio::test]
    async fn an_issue_is_expected_once_then_made_and_read() {
        static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
        let host = TestHost::new(Some(&SQLITE)).await.expect("a database");
        let issues = Issues::new("redmine");
        assert!(issues.expect(&host, "7").await.expect("stored"));
        assert!(!issues.expect(&host, "7").await.expect("stored"), "once");
        issues.set_issue(&host, "7", 42).await.expect("stored");
        issues.set_read(&host, 42, 10).await.expect("stored");
        issues.set_read(&host, 42, 9).await.expect("stored");
        let issue = issues
            .of_issue(&host, 42)
            .await
            .expect("read")
            .expect("there");
        assert_eq!(issue.request, "7");
        assert_eq!(issue.last_journal, 10, "never back");
        issues.set_closed(&host, "7").await.expect("stored");
        let issue = issues
            .of_request(&host, "7")
            .await
            .expect("read")
            .expect("there");
        assert!(issue.closed);
        assert_eq!(
            Issues::new("other")
                .of_request(&host, "7")
                .await
                .expect("read"),
            None
        );
    }
}
