"""Checkout: the catalog, the Stripe adapter and the checkout saga that drives the voucher and
wallet aggregates through the command bus (and compensates when a step fails)."""
