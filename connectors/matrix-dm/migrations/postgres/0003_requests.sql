-- Helpdesk requests (matrix_dm sources): one customer's conversation with the operators, a
-- direct chat on one side and a thread in the backoffice room on the other. At most one open
-- request per direct chat; counting a customer's or a homeserver's requests is an index range.
CREATE TABLE requests (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id TEXT NOT NULL,
    customer TEXT NOT NULL,
    server TEXT NOT NULL,
    dm_room TEXT NOT NULL,
    thread_root TEXT,
    title TEXT NOT NULL,
    last_activity_at BIGINT NOT NULL,
    closed_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX requests_open_dm ON requests (source_id, dm_room) WHERE closed_at IS NULL;
CREATE UNIQUE INDEX requests_thread ON requests (source_id, thread_root);
CREATE INDEX requests_customer ON requests (source_id, customer);
CREATE INDEX requests_server ON requests (source_id, server);
CREATE INDEX requests_idle ON requests (source_id, last_activity_at) WHERE closed_at IS NULL;
