"""HTTP routes: thin blueprints over the services; and poll_shortcut.py, which answers the status
poll from its copy before Flask sees it."""
