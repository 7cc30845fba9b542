-- Attested node agents (the agent API), and the entries revision: a counter
-- that triggers bump in the transaction of every entry change and agent
-- eviction, so that a waiting long poll on any replica sees the change.
CREATE TABLE agents (
    spiffe_id   TEXT COLLATE "C" PRIMARY KEY,
    attestor    TEXT NOT NULL,
    selectors   TEXT NOT NULL DEFAULT '[]',
    serial      TEXT NOT NULL DEFAULT '',
    prev_serial TEXT NOT NULL DEFAULT '',
    expires_at  BIGINT NOT NULL,
    evicted     BOOLEAN NOT NULL DEFAULT false,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE revisions (
    name  TEXT COLLATE "C" PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO revisions (name, value) VALUES ('entries', 0);

CREATE FUNCTION bump_entries_revision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE revisions SET value = value + 1 WHERE name = 'entries';
    RETURN NULL;
END
$$;
CREATE TRIGGER entries_revision AFTER INSERT OR UPDATE OR DELETE ON entries
    FOR EACH STATEMENT EXECUTE FUNCTION bump_entries_revision();
CREATE TRIGGER entry_selectors_revision AFTER UPDATE ON entry_selectors
    FOR EACH STATEMENT EXECUTE FUNCTION bump_entries_revision();
CREATE TRIGGER agents_revision_evict AFTER UPDATE OF evicted ON agents
    FOR EACH ROW WHEN (NEW.evicted IS DISTINCT FROM OLD.evicted) EXECUTE FUNCTION bump_entries_revision();
