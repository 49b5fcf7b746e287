-- Issue 22: global vouchers at the hub, a function of the hub's global events
-- (<prefix>.events.global.<CODE>): each code's definition, cap and pool, and per Sovereign
-- what the hub allotted, asked back and last observed on its trail.

CREATE TABLE global_vouchers (
    code                      text PRIMARY KEY
        CHECK (code ~ '^[A-Z0-9][A-Z0-9_-]*$' AND length(code) BETWEEN 3 AND 64),
    credit_baisa              bigint NOT NULL CHECK (credit_baisa >= 0),
    description               text NOT NULL,
    max_redemptions           integer NOT NULL CHECK (max_redemptions > 0),  -- the cap
    sovereigns                jsonb NOT NULL,   -- the Sovereigns named at the issue
    share                     integer NOT NULL CHECK (share > 0),  -- the policy's share
    revoked                   boolean NOT NULL,
    revoked_at                timestamptz,
    pool                      integer NOT NULL,
    created_at                timestamptz NOT NULL,
    updated_at                timestamptz NOT NULL,
    last_seq                  bigint NOT NULL,
    starts_at                 timestamptz,
    expires_at                timestamptz,
    plans                     jsonb,
    min_order_baisa           bigint NOT NULL CHECK (min_order_baisa >= 0),
    new_organizations_only    boolean NOT NULL,
    credit_valid_for_seconds  bigint,
    discount                  jsonb,
    -- the cap holds in the read model too (invariant 7): the Sovereigns hold at most the cap
    CONSTRAINT global_vouchers_pool_check CHECK (pool BETWEEN 0 AND max_redemptions)
);
CREATE INDEX global_vouchers_newest ON global_vouchers (created_at DESC, code);

CREATE TABLE global_shares (
    code        text NOT NULL REFERENCES global_vouchers (code),
    sovereign   text NOT NULL,
    allotted    integer NOT NULL CHECK (allotted >= 0),  -- all slots ever given
    released    integer NOT NULL CHECK (released >= 0),  -- all slots it gave back
    requested   integer NOT NULL CHECK (requested >= 0),  -- all slots asked back
    answered    integer NOT NULL CHECK (answered >= 0),  -- the requests it has answered
    redeemed    integer NOT NULL CHECK (redeemed >= 0),  -- as last observed on the trail
    trail_seq   bigint NOT NULL,  -- the trail position of that observation (0: none yet)
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (code, sovereign),
    CONSTRAINT global_shares_within_allotted CHECK (released <= allotted)
);
