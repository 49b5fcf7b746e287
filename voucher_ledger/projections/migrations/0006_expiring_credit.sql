-- Issue 20: expiring credit. A voucher may say how long the credit of a redemption lasts; an
-- expiring grant is a lot whose unspent, unreserved remainder is tracked until it expires
-- (wallet.credit_expired takes it out of the balance). Credit that never expires is the rest
-- of the balance and has no rows here.
ALTER TABLE vouchers
    ADD COLUMN credit_valid_for_seconds bigint CHECK (credit_valid_for_seconds > 0);

CREATE TABLE credit_lots (
    redemption_id  text PRIMARY KEY,
    customer_id    text NOT NULL,
    code           text NOT NULL,
    order_id       text NOT NULL,
    granted_baisa  bigint NOT NULL CHECK (granted_baisa > 0),
    left_baisa     bigint NOT NULL CHECK (left_baisa >= 0),
    expires_at     timestamptz NOT NULL,
    last_seq       bigint NOT NULL
);
CREATE INDEX credit_lots_by_customer ON credit_lots (customer_id, expires_at);
-- What the expiry sweeper looks for: expired grants with something left.
CREATE INDEX credit_lots_due ON credit_lots (expires_at) WHERE left_baisa > 0;

ALTER TABLE credit_entries
    DROP CONSTRAINT credit_entries_kind_check,
    ADD CONSTRAINT credit_entries_kind_check
        CHECK (kind IN ('granted', 'revoked', 'reserved', 'captured', 'released', 'expired'));
