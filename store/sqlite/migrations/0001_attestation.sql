-- Attestation state: RCAR sessions, join tokens, registration entries.
CREATE TABLE sessions (
    id           TEXT PRIMARY KEY,
    tee          TEXT NOT NULL,
    nonce        TEXT NOT NULL,
    extra_params BLOB,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    nonce_used   INTEGER NOT NULL DEFAULT 0,
    claims       BLOB
);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

CREATE TABLE join_tokens (
    id         TEXT PRIMARY KEY,
    spiffe_id  TEXT NOT NULL DEFAULT '',
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE entries (
    id            TEXT PRIMARY KEY,
    spiffe_id     TEXT NOT NULL,
    parent_id     TEXT NOT NULL,
    x509_ttl_ns   INTEGER NOT NULL DEFAULT 0,
    jwt_ttl_ns    INTEGER NOT NULL DEFAULT 0,
    dns_names     TEXT NOT NULL DEFAULT '[]',
    created_at    INTEGER NOT NULL
);
CREATE INDEX entries_parent_id ON entries (parent_id);
CREATE INDEX entries_spiffe_id ON entries (spiffe_id);

CREATE TABLE entry_selectors (
    entry_id TEXT NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    type     TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (entry_id, position)
);
