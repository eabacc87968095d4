-- The web app: a password per user (a werkzeug hash; empty: no password, API keys only), the
-- browsers signed in (by the digest of the token their cookie holds, so sign-out ends it on every
-- replica), and the key that signs cookies, made once and shared by every replica.
ALTER TABLE users ADD COLUMN password_hash text NOT NULL DEFAULT '';

CREATE TABLE sign_ins (
    digest      text PRIMARY KEY,
    user_id     text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created     timestamptz NOT NULL DEFAULT now(),
    expires     timestamptz NOT NULL
);
CREATE INDEX sign_ins_user ON sign_ins(user_id);

CREATE TABLE app_secrets (
    name        text PRIMARY KEY,
    value       text NOT NULL,
    created     timestamptz NOT NULL DEFAULT now()
);
