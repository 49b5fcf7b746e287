"""The write side: the command envelope (wire), the event store and its JetStream implementation,
the sequential processors and their host, the command bus."""
