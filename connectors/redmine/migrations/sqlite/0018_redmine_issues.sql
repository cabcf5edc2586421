-- Redmine: the issue kept for each request of the followed helpdesk (`request` is the
-- helpdesk's request ID; `issue_id` is NULL until the issue exists), and how far its
-- journals have been read.
CREATE TABLE redmine_issues (
    source_id TEXT NOT NULL,
    request TEXT NOT NULL,
    issue_id BIGINT,
    last_journal BIGINT NOT NULL DEFAULT 0,
    closed BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (source_id, request)
);
CREATE INDEX redmine_issues_by_issue ON redmine_issues (source_id, issue_id);
