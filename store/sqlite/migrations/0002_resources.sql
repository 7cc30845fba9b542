-- Delivered material: sealed resources, sealed keys, policy documents.
CREATE TABLE resources (
    path       TEXT PRIMARY KEY,
    sealed     BLOB NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE keys (
    kind       TEXT NOT NULL,
    id         TEXT NOT NULL,
    sealed     BLOB NOT NULL,
    public     BLOB,
    not_before INTEGER NOT NULL,
    not_after  INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
);

CREATE TABLE policies (
    name       TEXT PRIMARY KEY,
    text       TEXT NOT NULL,
    revision   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
