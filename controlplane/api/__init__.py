"""HTTP routes: thin blueprints over the services."""
