-- Attestation tokens spent on an agent SVID (the agent API's first
-- issuance), kept until they expire: a token is good for one agent key,
-- and a retry is answered with the answer recorded for it.
CREATE TABLE spent_tokens (
    token_id   TEXT PRIMARY KEY,
    key_digest TEXT NOT NULL,
    answer     BLOB NOT NULL DEFAULT '',
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX spent_tokens_expires_at ON spent_tokens (expires_at);
