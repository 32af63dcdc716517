-- Listen-along: the StreamChannel a room is bound to (its ChatRoom's spec.channelRef), declared with the
-- room so the API can serve the web client's bindings. No foreign key: either may be declared first.
ALTER TABLE rooms ADD COLUMN channel text CHECK (channel ~ '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$');
-- What a channel's players may ask for: [{"name", "codec"}] from its StreamChannel's spec.renditions (null: unknown).
ALTER TABLE channels ADD COLUMN renditions jsonb CHECK (renditions IS NULL OR jsonb_typeof(renditions) = 'array');
