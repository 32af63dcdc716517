-- Rooms and channels mirror the ChatRoom / StreamChannel custom resources. The
-- operator (or `veza up`) keeps them in sync through PUT /api/v1/admin/rooms/{name}
-- and PUT /api/v1/admin/channels/{name}; names follow Kubernetes object names.
CREATE TABLE rooms (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'),
    title       text NOT NULL,
    visibility  text NOT NULL DEFAULT 'public' CHECK (visibility IN ('public', 'private')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE channels (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'),
    title       text NOT NULL,
    visibility  text NOT NULL DEFAULT 'public' CHECK (visibility IN ('public', 'private')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Per-resource roles. Kept when a room is deleted and re-declared (GitOps
-- re-creates objects), hence no foreign key to rooms/channels either.
CREATE TABLE room_roles (
    room        text NOT NULL,
    user_id     uuid NOT NULL,
    role        text NOT NULL CHECK (role IN ('owner', 'moderator', 'member')),
    granted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room, user_id)
);
CREATE INDEX room_roles_user ON room_roles (user_id);

CREATE TABLE channel_roles (
    channel     text NOT NULL,
    user_id     uuid NOT NULL,
    role        text NOT NULL CHECK (role IN ('broadcaster', 'listener')),
    granted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, user_id)
);
CREATE INDEX channel_roles_user ON channel_roles (user_id);

-- Moderation decisions taken through the API (the chat worker enforces them).
CREATE TABLE room_moderation (
    id          bigserial PRIMARY KEY,
    room        text NOT NULL,
    user_id     uuid NOT NULL,
    action      text NOT NULL CHECK (action IN ('ban', 'unban', 'mute', 'unmute')),
    reason      text NOT NULL DEFAULT '',
    actor_id    uuid NOT NULL,
    until       timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX room_moderation_room ON room_moderation (room, user_id, id DESC);
