-- Chat: per-room sequence counters, the ordered event log, reactions, read receipts, sanctions.
-- No foreign key to users (ranges stay independent, see docs/development.md).

CREATE TABLE chat_rooms (
    room      text PRIMARY KEY,
    last_seq  bigint NOT NULL DEFAULT 0
);

-- One row per sequenced event of a room: messages, edits, deletes, reaction changes.
-- A message row also holds the message's current state (edited text, deletion).
CREATE TABLE chat_events (
    room           text        NOT NULL,
    seq            bigint      NOT NULL,
    kind           text        NOT NULL CHECK (kind IN ('message', 'edit', 'delete', 'reaction_add', 'reaction_remove')),
    id             uuid        NOT NULL DEFAULT gen_random_uuid(),
    author         text        NOT NULL,
    author_name    text        NOT NULL,
    client_msg_id  text        NOT NULL,
    body           text,
    reply_to       bigint,
    target         bigint,
    emoji          text,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    edited_at      timestamptz,
    deleted_at     timestamptz,
    PRIMARY KEY (room, seq),
    -- Idempotency: a retried send (same client message id) never makes a second event.
    UNIQUE (room, author, client_msg_id)
);
-- No other index on (room, ...): with statistics that do not know a new room yet, the planner took
-- a (room, created_at) index for the duplicate probe and filtered the whole room for every send.

CREATE TABLE chat_reactions (
    room     text   NOT NULL,
    seq      bigint NOT NULL,
    user_id  text   NOT NULL,
    emoji    text   NOT NULL,
    PRIMARY KEY (room, seq, user_id, emoji)
);

CREATE TABLE chat_reads (
    room        text        NOT NULL,
    user_id     text        NOT NULL,
    seq         bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room, user_id)
);

CREATE TABLE chat_sanctions (
    room        text        NOT NULL,
    user_id     text        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('ban', 'mute')),
    until       timestamptz,
    reason      text,
    by_user     text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room, user_id, kind)
);

-- Group commit: append a batch of events to a room in one statement (one round trip, one
-- transaction). Sequence numbers are allocated under the room row's lock, so they are gapless
-- and commit order equals sequence order, also across replicas. Events whose
-- (author, client_msg_id) already exist are not inserted again: they come back with
-- r_duplicate = true and the original seq. Edits, deletes and reactions are applied to their
-- target message in the same transaction.
CREATE FUNCTION chat_append(p_room text, p_kinds text[], p_authors text[], p_names text[], p_cids text[],
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
        -- LIMIT keeps the LATERAL subquery from being flattened into a join over the whole room:
        -- one unique-index probe per input row, whatever the table's statistics say.
        SELECT i.ord, e.seq, e.id, e.created_at
        FROM input i CROSS JOIN LATERAL (
            SELECT x.seq, x.id, x.created_at FROM chat_events x
            WHERE x.room = p_room AND x.author = i.author AND x.client_msg_id = i.cid LIMIT 1) e
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
