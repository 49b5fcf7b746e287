-- Issue 20: when a voucher redeems (starts_at inclusive, expires_at exclusive; NULL: no bound)
-- and who may redeem it (plans: a JSON array of plan ids, NULL: any plan; min_order_baisa, 0:
-- any total; new_organizations_only). voucher.issued v1 events had none of these: the
-- defaults are what they upcast to.
ALTER TABLE vouchers
    ADD COLUMN starts_at timestamptz,
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN plans jsonb,
    ADD COLUMN min_order_baisa bigint NOT NULL DEFAULT 0 CHECK (min_order_baisa >= 0),
    ADD COLUMN new_organizations_only boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT vouchers_window_check
        CHECK (starts_at IS NULL OR expires_at IS NULL OR expires_at > starts_at);
