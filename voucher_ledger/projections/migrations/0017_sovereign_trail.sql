-- Issue 22, deliverable 3: the hub's read model of its Sovereigns' trail (the stream
-- <PREFIX>_SOVEREIGNS, which sources each Sovereign's event stream). One row per redemption a
-- Sovereign recorded (voucher.redeemed), marked when reversed (voucher.redemption_reversed);
-- trail_seq is the trail stream's sequence, not the hub's event stream's.

CREATE TABLE sovereign_redemptions (
    sovereign           text NOT NULL,
    code                text NOT NULL,
    customer_id         text NOT NULL,
    redemption_id       text NOT NULL,
    user_id             text NOT NULL,
    credit_baisa        bigint NOT NULL,
    redeemed_at         timestamptz NOT NULL,
    reversed_at         timestamptz,
    trail_seq           bigint NOT NULL,
    reversed_trail_seq  bigint,
    PRIMARY KEY (sovereign, redemption_id)
);
CREATE INDEX sovereign_redemptions_by_code ON sovereign_redemptions (sovereign, code);

-- How far the trail projector has applied the trail, per Sovereign (the trail sequence of the
-- last event of that Sovereign it applied, whatever its type); the projector's checkpoint is
-- the highest of them.
CREATE TABLE sovereign_trail_status (
    sovereign   text PRIMARY KEY,
    last_seq    bigint NOT NULL CHECK (last_seq >= 0),
    events      bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
