"""Pure domain: voucher codes, commands, events, the decider. Imports no I/O library."""
