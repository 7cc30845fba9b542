-- Attestation tokens spent on an agent SVID (the agent API's first
-- issuance), kept until they expire: a token is good for one agent key.
CREATE TABLE spent_tokens (
    token_id   TEXT COLLATE "C" PRIMARY KEY,
    key_digest TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX spent_tokens_expires_at ON spent_tokens (expires_at);
