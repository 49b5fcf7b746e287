"""Command transport: partitioning, the JetStream event store, sequential processors, the bus."""
