-- Issue #21: discount vouchers (a voucher's terms) and the discount an order got.
ALTER TABLE vouchers ADD COLUMN discount jsonb;
ALTER TABLE orders ADD COLUMN discount_baisa bigint NOT NULL DEFAULT 0
    CHECK (discount_baisa >= 0 AND discount_baisa <= total_baisa);
ALTER TABLE orders ADD COLUMN discount_code text;
-- A discount voucher grants no credit: credit_baisa is 0 exactly when it has a discount.
ALTER TABLE vouchers DROP CONSTRAINT vouchers_credit_baisa_check;
ALTER TABLE vouchers ADD CONSTRAINT vouchers_credit_or_discount
    CHECK ((discount IS NULL AND credit_baisa > 0) OR (discount IS NOT NULL AND credit_baisa = 0));
-- A campaign's codes may give a discount too (its terms; credit_baisa 0 then).
ALTER TABLE campaigns ADD COLUMN discount jsonb;
ALTER TABLE campaigns DROP CONSTRAINT campaigns_credit_baisa_check;
ALTER TABLE campaigns ADD CONSTRAINT campaigns_credit_or_discount
    CHECK ((discount IS NULL AND credit_baisa > 0) OR (discount IS NOT NULL AND credit_baisa = 0));
