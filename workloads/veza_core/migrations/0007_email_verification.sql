-- Email addresses are proven before they grant anything. A password account stays unverified until its
-- owner confirms the address (a link mailed at registration, redeemed with the password) or anyone logs in
-- by a way that proves it (a magic link, OIDC with email_verified), which then also clears the password.
ALTER TABLE users ADD COLUMN email_verified_at timestamptz;
-- Accounts without a password were made by a magic link or OIDC: their address was proven then.
UPDATE users SET email_verified_at = created_at WHERE password_hash IS NULL;

-- A mailed link either logs in ('login') or confirms a registration ('verify', redeemed with the password).
ALTER TABLE magic_links ADD COLUMN purpose text NOT NULL DEFAULT 'login' CHECK (purpose IN ('login', 'verify'));
