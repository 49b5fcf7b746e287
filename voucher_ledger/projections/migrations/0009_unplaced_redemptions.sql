-- Issue #19: a checkout redeems first and places its order in the wallet next. Recovery looks
-- for live redemptions of recent checkouts whose order never reached the wallet (the process
-- stopped in between): this index keeps that look to the recent ones.
CREATE INDEX redemptions_live_by_time ON redemptions (redeemed_at) WHERE reversed_at IS NULL;
