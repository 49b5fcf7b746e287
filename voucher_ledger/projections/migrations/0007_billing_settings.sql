-- The Stripe keys an operator sets from the seed's admin UI (GET/PUT /billing/admin/settings).
-- Not a read model: no event writes it (secrets never go on the event stream) and a rebuild
-- leaves it alone. The two secrets are Fernet tokens (AES-128-CBC with HMAC-SHA256) under the
-- settings key (SETTINGS_KEY, or DATA_DIR/settings.key on the embedded default), so a backup
-- of the database holds no secret in clear; the publishable key is public by design.
CREATE TABLE billing_settings (
    id integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    stripe_secret_key bytea,
    stripe_webhook_secret bytea,
    stripe_public_key text NOT NULL DEFAULT '',
    updated_at timestamptz,
    updated_by text NOT NULL DEFAULT ''
);
