-- Security-relevant events, append-only, queryable by admins.
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    event       text NOT NULL,               -- e.g. login.success, token.reuse, role.granted
    actor_id    uuid,                        -- who did it (NULL: anonymous or the system)
    subject     text,                        -- what it was done to (user id, room/<name>, key id)
    ip          text,
    request_id  text,
    details     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_event ON audit_log (event, id DESC);
CREATE INDEX audit_log_actor ON audit_log (actor_id, id DESC);

-- Signing keys seen active, so a rotation is audited once however many replicas notice it.
CREATE TABLE signing_keys_seen (
    kid         text PRIMARY KEY,
    first_seen  timestamptz NOT NULL DEFAULT now()
);
