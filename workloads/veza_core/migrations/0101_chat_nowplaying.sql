-- Listen-along: a room bound to a stream channel keeps the channel's track changes in its timeline, as
-- `nowplaying` events written by the chat worker (author `system`, the channel event's id as client id, so a
-- redelivered event is stored once). `meta` holds what the event says beyond its title (channel, track id,
-- start time).
ALTER TABLE chat_events DROP CONSTRAINT chat_events_kind_check;
ALTER TABLE chat_events ADD CONSTRAINT chat_events_kind_check
    CHECK (kind IN ('message', 'edit', 'delete', 'reaction_add', 'reaction_remove', 'nowplaying'));
ALTER TABLE chat_events ADD COLUMN meta jsonb;
