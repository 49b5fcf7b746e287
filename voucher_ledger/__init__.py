"""voucher-ledger: an event-sourced voucher and credit ledger over NATS JetStream and PostgreSQL."""

__version__ = "0.1.0"
