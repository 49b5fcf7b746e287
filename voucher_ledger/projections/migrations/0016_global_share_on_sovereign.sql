-- Issue #22: on a Sovereign, a global code's voucher row carries its share: the slots the
-- hub allotted (voucher.share_received), those given back (voucher.share_released), and
-- whether the hub's pool was empty when it last said. NULL for a voucher of the Sovereign's
-- own. The preview answers "share_exhausted" (or "capped", the pool empty) from them.
ALTER TABLE vouchers ADD COLUMN share_received integer;
ALTER TABLE vouchers ADD COLUMN share_released integer;
ALTER TABLE vouchers ADD COLUMN share_pool_empty boolean;
ALTER TABLE vouchers ADD CONSTRAINT vouchers_share_all_or_none CHECK (
    (share_received IS NULL) = (share_released IS NULL)
    AND (share_received IS NULL) = (share_pool_empty IS NULL)
    AND (share_released IS NULL OR share_released BETWEEN 0 AND share_received)
);
