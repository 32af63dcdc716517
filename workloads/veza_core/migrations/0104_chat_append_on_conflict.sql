-- chat_append no longer probes for resent client ids before inserting: the insert itself skips them, on the unique
-- key (room, author, client_msg_id), which is the arbiter whatever the planner thinks of the table.
--
-- The probe (0102, 0103) had its plan chosen by the planner. On a table never analyzed (a new database's first
-- minute, until autovacuum's first ANALYZE) the primary key (room, seq) and the unique key cost the same to it, and
-- a connection's plan sometimes took the primary key: every probe then read the whole room, and a new room's
-- commits slowed down as it grew (the durable benchmark's first round ran at a fifth of the others' rate, by
-- chance, in about half of the runs). The insert's conflict check needs no plan, and the commit saves one index
-- probe per event.
--
-- Each event takes the seq of its place in the batch. A skipped one leaves a hole: rare (a client's resend after a
-- lost ack), so only then are the batch's seqs closed up, in order, and the skipped events looked up.
CREATE OR REPLACE FUNCTION chat_append(p_room text, p_kinds text[], p_authors text[], p_names text[], p_cids text[],
                                       p_bodies text[], p_reply_to bigint[], p_targets bigint[], p_emojis text[])
RETURNS TABLE (r_ord bigint, r_seq bigint, r_id uuid, r_created timestamptz, r_duplicate boolean)
LANGUAGE plpgsql
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    v_last bigint;
    v_seqs bigint[];
    v_ids uuid[];
    v_created timestamptz[];
BEGIN
    SELECT r.last_seq INTO v_last FROM chat_rooms r WHERE r.room = p_room FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO chat_rooms (room) VALUES (p_room) ON CONFLICT (room) DO NOTHING;
        SELECT r.last_seq INTO v_last FROM chat_rooms r WHERE r.room = p_room FOR UPDATE;
    END IF;

    WITH ins AS (
        INSERT INTO chat_events AS e (room, seq, kind, author, author_name, client_msg_id, body, reply_to,
                                      target, emoji)
        SELECT p_room, v_last + u.ord, u.kind, u.author, u.author_name, u.cid, u.body, u.reply_to, u.target, u.emoji
        FROM unnest(p_kinds, p_authors, p_names, p_cids, p_bodies, p_reply_to, p_targets, p_emojis)
             WITH ORDINALITY AS u(kind, author, author_name, cid, body, reply_to, target, emoji, ord)
        ON CONFLICT (room, author, client_msg_id) DO NOTHING
        RETURNING e.seq, e.id, e.created_at
    )
    SELECT coalesce(array_agg(ins.seq ORDER BY ins.seq), '{}'), array_agg(ins.id ORDER BY ins.seq),
           array_agg(ins.created_at ORDER BY ins.seq)
    INTO v_seqs, v_ids, v_created FROM ins;

    IF cardinality(v_seqs) = cardinality(p_kinds) THEN
        RETURN QUERY SELECT x.seq - v_last, x.seq, x.id, x.created_at, false
                     FROM unnest(v_seqs, v_ids, v_created) AS x(seq, id, created_at);
    ELSE
        -- Close the holes, keeping the order: through negative seqs, so that no two rows share one on the way.
        UPDATE chat_events e SET seq = -e.seq WHERE e.room = p_room AND e.seq = ANY (v_seqs);
        UPDATE chat_events e SET seq = v_last + x.rank
        FROM unnest(v_seqs) WITH ORDINALITY AS x(seq, rank)
        WHERE e.room = p_room AND e.seq = -x.seq;

        RETURN QUERY
        SELECT x.seq - v_last, v_last + x.rank, x.id, x.created_at, false
        FROM unnest(v_seqs, v_ids, v_created) WITH ORDINALITY AS x(seq, id, created_at, rank)
        UNION ALL
        -- The skipped ones: the event stored before (or earlier in this batch) under the same client id.
        SELECT u.ord, e.seq, e.id, e.created_at, true
        FROM unnest(p_authors, p_cids) WITH ORDINALITY AS u(author, cid, ord)
        JOIN chat_events e ON e.room = p_room AND e.author = u.author AND e.client_msg_id = u.cid
        WHERE NOT (v_last + u.ord = ANY (v_seqs));
    END IF;

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

    UPDATE chat_rooms r SET last_seq = v_last + cardinality(v_seqs) WHERE r.room = p_room;
END
$$;

DROP FUNCTION chat_duplicates(text, text[], text[]);
