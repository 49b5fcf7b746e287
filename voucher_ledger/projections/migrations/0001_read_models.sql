-- Read models of the voucher ledger. Every row here is a function of the event stream
-- (DESIGN.md invariant 5); projection_checkpoints says how far each projector has applied it.

CREATE TABLE projection_checkpoints (
    projection  text PRIMARY KEY,
    last_seq    bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE vouchers (
    code             text PRIMARY KEY CHECK (code ~ '^[A-Z0-9][A-Z0-9_-]{2,63}$'),
    credit_baisa     bigint NOT NULL CHECK (credit_baisa > 0),
    description      text NOT NULL,
    active           boolean NOT NULL,
    revoked          boolean NOT NULL DEFAULT false,
    max_redemptions  integer NOT NULL CHECK (max_redemptions >= 0),
    times_redeemed   integer NOT NULL DEFAULT 0 CHECK (times_redeemed >= 0),
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    revoked_at       timestamptz,
    last_seq         bigint NOT NULL
);
CREATE INDEX vouchers_live_newest ON vouchers (created_at DESC, code) WHERE NOT revoked;

CREATE TABLE redemptions (
    redemption_id    text PRIMARY KEY,
    code             text NOT NULL REFERENCES vouchers (code),
    customer_id      text NOT NULL,
    credit_baisa     bigint NOT NULL,
    redeemed_at      timestamptz NOT NULL,
    seq              bigint NOT NULL UNIQUE,
    command_id       text NOT NULL,
    reversed_at      timestamptz,
    reversed_seq     bigint,
    reversal_reason  text
);
CREATE INDEX redemptions_by_code ON redemptions (code, seq);
CREATE INDEX redemptions_by_customer ON redemptions (customer_id, seq);
-- At most one active redemption per customer per code (invariant 2, as a constraint too).
CREATE UNIQUE INDEX redemptions_one_active ON redemptions (code, customer_id) WHERE reversed_at IS NULL;

CREATE TABLE audit_log (
    seq           bigint PRIMARY KEY,
    event_id      text NOT NULL UNIQUE,
    type          text NOT NULL,
    version       integer NOT NULL,
    aggregate     text NOT NULL,
    aggregate_id  text NOT NULL,
    actor_sub     text NOT NULL,
    actor_role    text NOT NULL,
    command_id    text NOT NULL,
    occurred_at   timestamptz NOT NULL,
    event         jsonb NOT NULL  -- the envelope verbatim, as stored on the stream
);
CREATE INDEX audit_log_by_aggregate ON audit_log (aggregate, aggregate_id, seq);
