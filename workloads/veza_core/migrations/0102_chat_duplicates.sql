-- chat_append's duplicate check probes the unique index (room, author, client_msg_id) once per input row, whatever
-- the statistics say. chat_append is planned per call (force_custom_plan: for the batch's real size), and so was its
-- probe: for a room absent from chat_events' statistics (new since the last ANALYZE, however big since) both indexes
-- looked equally cheap and the smaller primary key (room, seq) won, filtering author and client id: a scan of the
-- whole room for every message (a 90-message commit into a room of 30,000 events took 236 ms instead of 6.5 ms).
-- In a function of its own, planned once generically, the probe does not know the room and takes the index that
-- answers it.
CREATE FUNCTION chat_duplicates(p_room text, p_authors text[], p_cids text[])
RETURNS TABLE (d_ord bigint, d_seq bigint, d_id uuid, d_created timestamptz)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN QUERY
    SELECT i.ord, x.seq, x.id, x.created_at
    FROM unnest(p_authors, p_cids) WITH ORDINALITY AS i(author, cid, ord)
    JOIN chat_events x ON x.room = p_room AND x.author = i.author AND x.client_msg_id = i.cid;
END
$$;

CREATE OR REPLACE FUNCTION chat_append(p_room text, p_kinds text[], p_authors text[], p_names text[], p_cids text[],
                            p_bodies text[], p_reply_to bigint[], p_targets bigint[], p_emojis text[])
RETURNS TABLE (r_ord bigint, r_seq bigint, r_id uuid, r_created timestamptz, r_duplicate boolean)
LANGUAGE plpgsql
-- A generic plan would assume 10 input rows and nest loops over the batch; plan each call.
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    v_last bigint;
BEGIN
    SELECT r.last_seq INTO v_last FROM chat_rooms r WHERE r.room = p_room FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO chat_rooms (room) VALUES (p_room) ON CONFLICT (room) DO NOTHING;
        SELECT r.last_seq INTO v_last FROM chat_rooms r WHERE r.room = p_room FOR UPDATE;
    END IF;

    RETURN QUERY
    WITH input AS (
        SELECT u.kind, u.author, u.author_name, u.cid, u.body, u.reply_to, u.target, u.emoji, u.ord
        FROM unnest(p_kinds, p_authors, p_names, p_cids, p_bodies, p_reply_to, p_targets, p_emojis)
             WITH ORDINALITY AS u(kind, author, author_name, cid, body, reply_to, target, emoji, ord)
    ), dup AS (
        SELECT d.d_ord AS ord, d.d_seq AS seq, d.d_id AS id, d.d_created AS created_at
        FROM chat_duplicates(p_room, p_authors, p_cids) d
    ), fresh AS (
        SELECT i.*, row_number() OVER (ORDER BY i.ord) AS rn
        FROM input i WHERE NOT EXISTS (SELECT 1 FROM dup d WHERE d.ord = i.ord)
    ), ins AS (
        INSERT INTO chat_events AS e (room, seq, kind, author, author_name, client_msg_id, body, reply_to,
                                      target, emoji)
        SELECT p_room, v_last + f.rn, f.kind, f.author, f.author_name, f.cid, f.body, f.reply_to, f.target, f.emoji
        FROM fresh f
        RETURNING e.seq, e.id, e.created_at
    )
    SELECT f.ord, ins.seq, ins.id, ins.created_at, false FROM ins JOIN fresh f ON ins.seq = v_last + f.rn
    UNION ALL
    SELECT d.ord, d.seq, d.id, d.created_at, true FROM dup d;

    IF p_kinds && ARRAY['edit', 'delete', 'reaction_add', 'reaction_remove'] THEN
        UPDATE chat_events t SET body = e.body, edited_at = e.created_at
        FROM chat_events e
        WHERE e.room = p_room AND e.seq > v_last AND e.kind = 'edit' AND t.room = p_room AND t.seq = e.target;

        UPDATE chat_events t SET body = NULL, deleted_at = e.created_at
        FROM chat_events e
        WHERE e.room = p_room AND e.seq > v_last AND e.kind = 'delete' AND t.room = p_room AND t.seq = e.target;

        INSERT INTO chat_reactions (room, seq, user_id, emoji)
        SELECT p_room, e.target, e.author, e.emoji FROM chat_events e
        WHERE e.room = p_room AND e.seq > v_last AND e.kind = 'reaction_add'
        ON CONFLICT DO NOTHING;

        DELETE FROM chat_reactions r USING chat_events e
        WHERE e.room = p_room AND e.seq > v_last AND e.kind = 'reaction_remove'
          AND r.room = p_room AND r.seq = e.target AND r.user_id = e.author AND r.emoji = e.emoji;
    END IF;

    UPDATE chat_rooms r SET last_seq = COALESCE(
        (SELECT max(e.seq) FROM chat_events e WHERE e.room = p_room AND e.seq > v_last), v_last)
    WHERE r.room = p_room;
END
$$;
