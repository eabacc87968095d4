"""The stateless Flask control plane: the only writer of PostgreSQL."""
