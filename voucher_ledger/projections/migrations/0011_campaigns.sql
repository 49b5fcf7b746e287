-- Issue 21: campaigns of generated codes under one cap and one budget, a function of the
-- campaign events (<prefix>.events.campaign.<ID>). A code's state is its redemptions: the
-- codes table is insert-only (ordinal: its place in the campaign, in generation order).

CREATE TABLE campaigns (
    campaign_id               text PRIMARY KEY,
    name                      text NOT NULL,
    description               text NOT NULL,
    kind                      text NOT NULL,
    credit_baisa              bigint NOT NULL CHECK (credit_baisa > 0),
    max_redemptions           integer NOT NULL CHECK (max_redemptions >= 0),
    budget_baisa              bigint CHECK (budget_baisa > 0),
    code_max_redemptions      integer NOT NULL CHECK (code_max_redemptions >= 0),
    active                    boolean NOT NULL,
    revoked                   boolean NOT NULL,
    codes_issued              integer NOT NULL CHECK (codes_issued >= 0),
    times_redeemed            integer NOT NULL CHECK (times_redeemed >= 0),
    granted_baisa             bigint NOT NULL CHECK (granted_baisa >= 0),
    created_at                timestamptz NOT NULL,
    updated_at                timestamptz NOT NULL,
    revoked_at                timestamptz,
    last_seq                  bigint NOT NULL,
    starts_at                 timestamptz,
    expires_at                timestamptz,
    plans                     jsonb,
    min_order_baisa           bigint NOT NULL CHECK (min_order_baisa >= 0),
    new_organizations_only    boolean NOT NULL,
    credit_valid_for_seconds  bigint,
    -- the limits hold in the read model too (invariant 7, as constraints)
    CONSTRAINT campaigns_cap_check
        CHECK (max_redemptions = 0 OR times_redeemed <= max_redemptions),
    CONSTRAINT campaigns_budget_check
        CHECK (budget_baisa IS NULL OR granted_baisa <= budget_baisa)
);
CREATE INDEX campaigns_newest ON campaigns (created_at DESC, campaign_id);

CREATE TABLE campaign_codes (
    code          text PRIMARY KEY CHECK (code ~ '^[A-Z0-9][A-Z0-9_-]{2,63}$'),
    campaign_id   text NOT NULL REFERENCES campaigns (campaign_id),
    ordinal       integer NOT NULL,
    batch         text NOT NULL,  -- the generating command's id (the Idempotency-Key)
    prefix        text,
    created_at    timestamptz NOT NULL,
    seq           bigint NOT NULL
);
CREATE UNIQUE INDEX campaign_codes_by_campaign ON campaign_codes (campaign_id, ordinal);
CREATE INDEX campaign_codes_by_batch ON campaign_codes (campaign_id, batch, ordinal);

CREATE TABLE campaign_redemptions (
    redemption_id    text PRIMARY KEY,
    campaign_id      text NOT NULL REFERENCES campaigns (campaign_id),
    code             text NOT NULL REFERENCES campaign_codes (code),
    customer_id      text NOT NULL,
    user_id          text NOT NULL,
    credit_baisa     bigint NOT NULL,
    redeemed_at      timestamptz NOT NULL,
    seq              bigint NOT NULL UNIQUE,
    command_id       text NOT NULL,
    order_id         text,
    reversed_at      timestamptz,
    reversed_seq     bigint,
    reversal_reason  text
);
CREATE INDEX campaign_redemptions_by_code ON campaign_redemptions (code, seq);
CREATE INDEX campaign_redemptions_by_campaign ON campaign_redemptions (campaign_id, seq);
-- One active redemption per account per campaign (the decider's rule, as a constraint too).
CREATE UNIQUE INDEX campaign_redemptions_one_active
    ON campaign_redemptions (campaign_id, customer_id) WHERE reversed_at IS NULL;
