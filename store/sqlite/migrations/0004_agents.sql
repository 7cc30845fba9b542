-- Attested node agents (the agent API), and the entries revision: a counter
-- that triggers bump in the transaction of every entry change and agent
-- eviction, so that a waiting long poll on any replica sees the change.
CREATE TABLE agents (
    spiffe_id   TEXT PRIMARY KEY,
    attestor    TEXT NOT NULL,
    selectors   TEXT NOT NULL DEFAULT '[]',
    serial      TEXT NOT NULL DEFAULT '',
    prev_serial TEXT NOT NULL DEFAULT '',
    expires_at  INTEGER NOT NULL,
    evicted     INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE revisions (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO revisions (name, value) VALUES ('entries', 0);

CREATE TRIGGER entries_revision_insert AFTER INSERT ON entries
BEGIN UPDATE revisions SET value = value + 1 WHERE name = 'entries'; END;
CREATE TRIGGER entries_revision_update AFTER UPDATE ON entries
BEGIN UPDATE revisions SET value = value + 1 WHERE name = 'entries'; END;
CREATE TRIGGER entries_revision_delete AFTER DELETE ON entries
BEGIN UPDATE revisions SET value = value + 1 WHERE name = 'entries'; END;
CREATE TRIGGER entry_selectors_revision_update AFTER UPDATE ON entry_selectors
BEGIN UPDATE revisions SET value = value + 1 WHERE name = 'entries'; END;
CREATE TRIGGER agents_revision_evict AFTER UPDATE OF evicted ON agents WHEN NEW.evicted <> OLD.evicted
BEGIN UPDATE revisions SET value = value + 1 WHERE name = 'entries'; END;
