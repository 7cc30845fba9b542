-- entries.List's filters as index ranges in id order: the parent's entries
-- (an agent's authorized entries, node aliases) and a SPIFFE ID's entries
-- (SVID issuance) without a scan or a sort.
DROP INDEX entries_parent_id;
DROP INDEX entries_spiffe_id;
CREATE INDEX entries_parent_id_id ON entries (parent_id, id);
CREATE INDEX entries_spiffe_id_id ON entries (spiffe_id, id);
