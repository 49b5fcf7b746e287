-- Subscriptions and invoices of the Organizations (issue 23), a function of the wallet events:
-- a completed order starts or changes its Organization's subscription (one per tenant, at the
-- order's total per month); a Stripe invoice paid, or whose payment failed, is one invoice row
-- (and marks the subscription active or past_due).

-- The orders a subscription may come from: what their order.opened said (the completion
-- names the order only).
CREATE TABLE subscription_orders (
    order_id     text PRIMARY KEY,
    customer_id  text NOT NULL,
    tenant_id    text NOT NULL,
    plan_id      text NOT NULL,
    total_baisa  bigint NOT NULL CHECK (total_baisa >= 0)
);

CREATE TABLE subscriptions (
    tenant_id             text PRIMARY KEY,
    id                    text NOT NULL,
    customer_id           text NOT NULL,
    plan_id               text NOT NULL,
    status                text NOT NULL CHECK (status IN ('active', 'past_due')),
    amount_baisa          bigint NOT NULL CHECK (amount_baisa >= 0),
    order_id              text NOT NULL,
    stripe_customer_id    text,
    current_period_start  timestamptz NOT NULL,
    current_period_end    timestamptz NOT NULL,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    last_seq              bigint NOT NULL
);
CREATE INDEX subscriptions_by_customer ON subscriptions (customer_id);

CREATE TABLE invoices (
    stripe_invoice_id   text PRIMARY KEY,
    id                  text NOT NULL,
    customer_id         text NOT NULL,
    tenant_id           text NOT NULL,
    stripe_customer_id  text,
    amount_baisa        bigint NOT NULL CHECK (amount_baisa >= 0),
    currency            text NOT NULL,
    -- Stripe's invoice statuses: paid, or open (its payment failed; Stripe retries it)
    status              text NOT NULL CHECK (status IN ('paid', 'open')),
    period_start        timestamptz,
    period_end          timestamptz,
    pdf_url             text,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    last_seq            bigint NOT NULL
);
CREATE INDEX invoices_by_tenant ON invoices (tenant_id, created_at DESC);
CREATE INDEX invoices_by_customer ON invoices (customer_id, created_at DESC);
