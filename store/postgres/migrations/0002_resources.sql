-- Delivered material: sealed resources, sealed keys, policy documents.
CREATE TABLE resources (
    path       TEXT COLLATE "C" PRIMARY KEY,
    sealed     BYTEA NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE keys (
    kind       TEXT COLLATE "C" NOT NULL,
    id         TEXT COLLATE "C" NOT NULL,
    sealed     BYTEA NOT NULL,
    public     BYTEA,
    not_before BIGINT NOT NULL,
    not_after  BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (kind, id)
);

CREATE TABLE policies (
    name       TEXT COLLATE "C" PRIMARY KEY,
    text       TEXT NOT NULL,
    revision   BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
