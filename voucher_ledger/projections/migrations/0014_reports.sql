-- Issue 21, deliverable 4: the reports read model. Every figure of GET /billing/reports/campaigns
-- is a sum of facts: one row per movement an event makes on a report line (a campaign, the
-- single vouchers, or orders without a code), at the event's time, so any window [from, to)
-- sums them. The other tables are what the applier needs to attribute a later event: each
-- grant's line and (credit that never expires) its unspent remainder, the credit each order
-- holds per grant, and each order's line and discount.

CREATE TABLE report_facts (
    seq              bigint NOT NULL,
    n                integer NOT NULL,  -- the fact's place among its event's facts
    scope            text NOT NULL,     -- a campaign id, 'vouchers' or 'none'
    at               timestamptz NOT NULL,
    codes_issued     integer NOT NULL,
    redemptions      integer NOT NULL,
    granted_baisa    bigint NOT NULL,
    spent_baisa      bigint NOT NULL,
    expired_baisa    bigint NOT NULL,
    discount_baisa   bigint NOT NULL,
    orders           integer NOT NULL,
    revenue_baisa    bigint NOT NULL,
    PRIMARY KEY (seq, n)
);
CREATE INDEX report_facts_by_time ON report_facts (at);

-- keyed by account first: a batch reads the grants of the accounts it touches by this key
-- (a rebuild keeps it while loading)
CREATE TABLE report_grants (
    customer_id      text NOT NULL,
    redemption_id    text NOT NULL,
    scope            text NOT NULL,
    expiring         boolean NOT NULL,
    left_baisa       bigint NOT NULL CHECK (left_baisa >= 0),
    seq              bigint NOT NULL,
    PRIMARY KEY (customer_id, redemption_id)
);

CREATE TABLE report_holds (
    order_id         text PRIMARY KEY,
    takes            jsonb NOT NULL     -- [[redemption_id, scope, amount_baisa, expiring], ...]
);

CREATE TABLE report_orders (
    order_id         text PRIMARY KEY,
    scope            text NOT NULL,
    discount_scope   text,
    discount_baisa   bigint NOT NULL
);
