-- Issue 20: the billing account is the Organization (the checkout's tenant_id). The wallet
-- rows, credit entries and orders keep their customer_id column, which now names the account;
-- the login that opened an order and redeemed a code is recorded beside it. Rows written
-- before are per-user wallets: their user is their account (as the events upcast: user_id =
-- customer_id), and each of their orders counted for its account's ownership unless it failed.
ALTER TABLE orders
    ADD COLUMN user_id text,
    ADD COLUMN member_by_claim boolean NOT NULL DEFAULT false,
    -- the order makes its user the account's owner: opened without a membership claim, and
    -- not failed (a refused checkout changes nothing, ownership included)
    ADD COLUMN owns boolean NOT NULL DEFAULT true;
UPDATE orders SET user_id = customer_id, owns = (status <> 'failed');
UPDATE orders SET owns = false
    WHERE status = 'refund_due' AND failure_message IS NOT NULL;
ALTER TABLE orders ALTER COLUMN user_id SET NOT NULL;
CREATE INDEX orders_owned_by ON orders (user_id, customer_id) WHERE owns;
CREATE INDEX orders_owner_of ON orders (customer_id) WHERE owns;

ALTER TABLE redemptions ADD COLUMN user_id text;
UPDATE redemptions SET user_id = customer_id;
ALTER TABLE redemptions ALTER COLUMN user_id SET NOT NULL;
-- At most one active redemption per user per code, whatever the Organization (invariant 2).
CREATE UNIQUE INDEX redemptions_one_active_user ON redemptions (code, user_id)
    WHERE reversed_at IS NULL;
