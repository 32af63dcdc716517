-- A session is one login; its refresh tokens form a family. Every refresh
-- rotates the token; presenting a token that was already used revokes the whole
-- family (a stolen token and its legitimate twin both stop working).
-- No foreign key to users: migration ranges stay independent (docs/development.md).
CREATE TABLE sessions (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL,
    method      text NOT NULL,               -- password | magic_link | oidc
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    revoked_why text
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE refresh_tokens (
    token_hash  bytea PRIMARY KEY,           -- sha256 of the opaque token; the token itself is never stored
    session_id  uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);
