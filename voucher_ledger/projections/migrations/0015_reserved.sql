-- Placeholder: version 15 is the global vouchers read model's (another branch of issue 22);
-- this file only keeps the versions without a gap until that migration is merged in its place.
SELECT 1;
