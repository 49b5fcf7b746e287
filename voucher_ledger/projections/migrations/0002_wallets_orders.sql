-- Wallet and order read models (issue 4). Every row is a function of the wallet events.
-- The CHECKs restate invariant 3: a projection row with negative credit cannot exist.

CREATE TABLE wallets (
    customer_id     text PRIMARY KEY,
    balance_baisa   bigint NOT NULL CHECK (balance_baisa >= 0),
    reserved_baisa  bigint NOT NULL CHECK (reserved_baisa >= 0),
    updated_at      timestamptz NOT NULL,
    last_seq        bigint NOT NULL,
    CHECK (reserved_baisa <= balance_baisa)
);

-- One row per credit movement event, with the wallet as it stood after it.
CREATE TABLE credit_entries (
    seq                   bigint PRIMARY KEY,
    customer_id           text NOT NULL,
    kind                  text NOT NULL
        CHECK (kind IN ('granted', 'revoked', 'reserved', 'captured', 'released')),
    amount_baisa          bigint NOT NULL CHECK (amount_baisa > 0),
    -- signed effect on the balance: granted +, captured and revoked -, holds 0
    balance_delta_baisa   bigint NOT NULL,
    reason                text NOT NULL,
    order_id              text,
    code                  text,
    redemption_id         text,
    balance_after_baisa   bigint NOT NULL CHECK (balance_after_baisa >= 0),
    reserved_after_baisa  bigint NOT NULL CHECK (reserved_after_baisa >= 0),
    created_at            timestamptz NOT NULL,
    CHECK (reserved_after_baisa <= balance_after_baisa)
);
CREATE INDEX credit_entries_by_customer ON credit_entries (customer_id, seq DESC);

CREATE TABLE orders (
    order_id              text PRIMARY KEY,
    customer_id           text NOT NULL,
    tenant_id             text NOT NULL,
    plan_id               text NOT NULL,
    apps                  jsonb NOT NULL,
    addons                jsonb NOT NULL,
    lines                 jsonb NOT NULL,
    promo_code            text,
    total_baisa           bigint NOT NULL CHECK (total_baisa >= 0),
    credit_applied_baisa  bigint NOT NULL DEFAULT 0 CHECK (credit_applied_baisa >= 0),
    amount_due_baisa      bigint NOT NULL CHECK (amount_due_baisa >= 0),
    amount_paid_baisa     bigint NOT NULL DEFAULT 0,
    paid_by_credit        boolean NOT NULL DEFAULT false,
    status                text NOT NULL CHECK (status IN ('opened', 'awaiting_payment',
                              'completed', 'failed', 'abandoned', 'refund_due')),
    stripe_session_id     text,
    session_url           text,
    redemption_id         text,
    failure_reason        text,
    failure_message       text,
    release_slot          boolean NOT NULL DEFAULT false,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    last_seq              bigint NOT NULL
);
CREATE INDEX orders_newest ON orders (created_at DESC, order_id);
CREATE INDEX orders_by_customer ON orders (customer_id, created_at DESC);
-- What checkout recovery scans: orders a crash may have left half-way.
CREATE INDEX orders_unsettled ON orders (created_at)
    WHERE status IN ('opened', 'awaiting_payment', 'failed');
