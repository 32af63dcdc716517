-- chat_duplicates probes the unique index (room, author, client_msg_id) once per input row, by construction.
-- Its generic plan (0102) is made at a connection's first call and kept until the table's statistics change. Made
-- on a table never analyzed (a new database's first room), it scanned the room by (room) alone and filtered author
-- and client id for every row: each commit read the whole room, and a new deployment's first busy room slowed down
-- as it grew until autovacuum first analyzed the table (5,000 rows in, commits of 100 messages took 20 ms and
-- growing; the durable benchmark's first round ran at a ninth of the others' rate). A LATERAL subquery with LIMIT
-- cannot be flattened into a join: it runs per input row with all three columns bound, which only the unique index
-- answers in one probe.
CREATE OR REPLACE FUNCTION chat_duplicates(p_room text, p_authors text[], p_cids text[])
RETURNS TABLE (d_ord bigint, d_seq bigint, d_id uuid, d_created timestamptz)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN QUERY
    SELECT i.ord, x.seq, x.id, x.created_at
    FROM unnest(p_authors, p_cids) WITH ORDINALITY AS i(author, cid, ord)
    CROSS JOIN LATERAL (
        SELECT e.seq, e.id, e.created_at FROM chat_events e
        WHERE e.room = p_room AND e.author = i.author AND e.client_msg_id = i.cid
        LIMIT 1
    ) x;
END
$$;
