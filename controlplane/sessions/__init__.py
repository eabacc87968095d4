"""Sessions and their interactions: the service behind the routes, the store, the status-poll copy,
live events and the views a client reads."""
