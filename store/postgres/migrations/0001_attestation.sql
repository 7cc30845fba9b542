-- Attestation state: RCAR sessions, join tokens, registration entries.
-- Times are Unix nanoseconds (BIGINT), as in the SQLite store, so that they
-- round-trip exactly. Keys and ordered columns use the "C" collation, so
-- that ORDER BY is bytewise on every server, whatever its locale.
CREATE TABLE sessions (
    id           TEXT COLLATE "C" PRIMARY KEY,
    tee          TEXT NOT NULL,
    nonce        TEXT NOT NULL,
    extra_params BYTEA,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    nonce_used   BOOLEAN NOT NULL DEFAULT false,
    claims       BYTEA
);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

CREATE TABLE join_tokens (
    id         TEXT COLLATE "C" PRIMARY KEY,
    spiffe_id  TEXT NOT NULL DEFAULT '',
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE entries (
    id          TEXT COLLATE "C" PRIMARY KEY,
    spiffe_id   TEXT COLLATE "C" NOT NULL,
    parent_id   TEXT COLLATE "C" NOT NULL,
    x509_ttl_ns BIGINT NOT NULL DEFAULT 0,
    jwt_ttl_ns  BIGINT NOT NULL DEFAULT 0,
    dns_names   TEXT[] NOT NULL DEFAULT '{}',
    created_at  BIGINT NOT NULL
);
-- Each filter of entries.List is an index range already in id order.
CREATE INDEX entries_parent_id ON entries (parent_id, id);
CREATE INDEX entries_spiffe_id ON entries (spiffe_id, id);

CREATE TABLE entry_selectors (
    entry_id TEXT COLLATE "C" NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    type     TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (entry_id, position)
);
