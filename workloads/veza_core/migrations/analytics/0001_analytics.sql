-- The analytics store: aggregates fed by the API's analytics consumer from the JetStream events
-- (docs/analytics.md). Applied to the analytics database (VEZA_ANALYTICS_DATABASE_URL, default: the
-- platform's own database), in the schema `analytics`.
CREATE SCHEMA IF NOT EXISTS analytics;

-- Every event applied, by its id: an event seen again (a redelivery, a replay) changes nothing.
CREATE TABLE IF NOT EXISTS analytics.applied_events (
    id text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Messages per room per hour (UTC).
CREATE TABLE IF NOT EXISTS analytics.room_messages_hourly (
    room text NOT NULL,
    hour timestamptz NOT NULL,
    messages bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (room, hour)
);

-- Who was active on which day (UTC): a user who sent at least one message. Active users per day is a count.
CREATE TABLE IF NOT EXISTS analytics.active_users_daily (
    day date NOT NULL,
    user_id text NOT NULL,
    PRIMARY KEY (day, user_id)
);

-- Listening time per channel, rendition and hour (UTC), in seconds, from the replicas' listener counts.
CREATE TABLE IF NOT EXISTS analytics.listener_seconds_hourly (
    channel text NOT NULL,
    rendition text NOT NULL,
    hour timestamptz NOT NULL,
    seconds double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (channel, rendition, hour)
);

-- The newest snapshot time seen per replica, so each snapshot counts the time since the previous one.
CREATE TABLE IF NOT EXISTS analytics.replica_snapshots (
    kind text NOT NULL,          -- 'listeners' or 'connections'
    scope text NOT NULL,         -- the channel or the room
    replica text NOT NULL,
    at timestamptz NOT NULL,
    counts jsonb NOT NULL,       -- the snapshot's counts (per rendition; {"connections": n} for a room)
    PRIMARY KEY (kind, scope, replica)
);

-- Peak concurrent listeners (per channel) and connections (per room), per day (UTC).
CREATE TABLE IF NOT EXISTS analytics.daily_peaks (
    kind text NOT NULL,          -- 'listeners' or 'connections'
    scope text NOT NULL,         -- the channel or the room
    day date NOT NULL,
    peak integer NOT NULL,
    at timestamptz NOT NULL,     -- when the peak was first reached
    PRIMARY KEY (kind, scope, day)
);

-- Plays per track and channel (a now-playing event is one play).
CREATE TABLE IF NOT EXISTS analytics.track_plays (
    channel text NOT NULL,
    title text NOT NULL,
    track_id text,
    plays bigint NOT NULL DEFAULT 0,
    last_played timestamptz NOT NULL,
    PRIMARY KEY (channel, title)
);
