-- Entry lookups whose cost does not grow with the number of entries.
-- entries.List's filters become index ranges in id order: the parent's
-- entries (an agent's authorized entries, node aliases) and a SPIFFE ID's
-- entries (SVID issuance), without a scan or a sort. Both tables are
-- rebuilt WITHOUT ROWID, clustered by their primary keys: an entry is one
-- b-tree descent from its id, and its selectors are adjacent rows of one
-- more, instead of an index and a table lookup each.
CREATE TABLE entries_new (
    id            TEXT PRIMARY KEY,
    spiffe_id     TEXT NOT NULL,
    parent_id     TEXT NOT NULL,
    x509_ttl_ns   INTEGER NOT NULL DEFAULT 0,
    jwt_ttl_ns    INTEGER NOT NULL DEFAULT 0,
    dns_names     TEXT NOT NULL DEFAULT '[]',
    created_at    INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO entries_new SELECT id, spiffe_id, parent_id, x509_ttl_ns, jwt_ttl_ns, dns_names, created_at FROM entries;

CREATE TABLE entry_selectors_new (
    entry_id TEXT NOT NULL REFERENCES entries_new (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    type     TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (entry_id, position)
) WITHOUT ROWID;
INSERT INTO entry_selectors_new SELECT entry_id, position, type, value FROM entry_selectors;

DROP TABLE entry_selectors;
DROP TABLE entries;
ALTER TABLE entries_new RENAME TO entries;
ALTER TABLE entry_selectors_new RENAME TO entry_selectors;
CREATE INDEX entries_parent_id_id ON entries (parent_id, id);
CREATE INDEX entries_spiffe_id_id ON entries (spiffe_id, id);
