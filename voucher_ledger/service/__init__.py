"""The running service: the stack of components ``serve`` brings up and down in order, the
processor child process, and the embedded nats-server and PostgreSQL."""
