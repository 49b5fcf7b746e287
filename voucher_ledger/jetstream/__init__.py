"""NATS plumbing: the connection, subjects and stream names (layout), ``streams.yaml``, leases,
the pull loop and the fenced fast paths into nats.py's internals."""
