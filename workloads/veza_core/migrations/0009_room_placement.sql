-- Pooled rooms: where a room's chat workers run and what they need to know of it. A pool worker serves every
-- room whose placement is 'pooled' and reads its worker spec (the ChatRoom's spec as a dedicated worker gets it
-- in VEZA_RESOURCE_SPEC, camelCase) from this row; both are declared by the operator with the room.
ALTER TABLE rooms ADD COLUMN spec jsonb CHECK (spec IS NULL OR jsonb_typeof(spec) = 'object');
ALTER TABLE rooms ADD COLUMN placement text NOT NULL DEFAULT 'dedicated' CHECK (placement IN ('pooled', 'dedicated'));
