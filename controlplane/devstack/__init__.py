"""`helix up`: the whole platform on one machine, with embedded PostgreSQL and Valkey."""
