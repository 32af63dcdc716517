-- Uploaded audio; the original lives in S3 at tracks/{id}/original and the
-- stream worker transcodes from there.
CREATE TABLE tracks (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    title         text NOT NULL,
    owner_id      uuid NOT NULL,
    object_key    text NOT NULL,
    content_type  text NOT NULL,
    size_bytes    bigint NOT NULL,
    duration_s    double precision NOT NULL,
    codec         text NOT NULL,
    container     text NOT NULL,
    sample_rate   integer,
    channels      integer,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tracks_owner ON tracks (owner_id, created_at DESC);
