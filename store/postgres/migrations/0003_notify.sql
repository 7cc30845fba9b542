-- Change notifications: every write to entries, keys or policies announces
-- its table on the channel "trustgate.<schema>" when it commits, so that
-- every replica's caches follow within a second (store.Changes).
CREATE FUNCTION trustgate_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('trustgate.' || current_schema(), TG_ARGV[0]);
    RETURN NULL;
END
$$;
CREATE TRIGGER entries_notify AFTER INSERT OR UPDATE OR DELETE ON entries
    FOR EACH STATEMENT EXECUTE FUNCTION trustgate_notify('entries');
CREATE TRIGGER keys_notify AFTER INSERT OR UPDATE OR DELETE ON keys
    FOR EACH STATEMENT EXECUTE FUNCTION trustgate_notify('keys');
CREATE TRIGGER policies_notify AFTER INSERT OR UPDATE OR DELETE ON policies
    FOR EACH STATEMENT EXECUTE FUNCTION trustgate_notify('policies');
