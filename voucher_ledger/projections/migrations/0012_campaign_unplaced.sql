-- Recovery looks for live redemptions of recent checkouts whose order never reached the wallet
-- (0009); a campaign's codes redeem into campaign_redemptions (0011): the same index there.
CREATE INDEX campaign_redemptions_live_by_time ON campaign_redemptions (redeemed_at)
    WHERE reversed_at IS NULL;
