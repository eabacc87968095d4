"""Users, API keys and runner tokens; how a request proves who it is; the web app's sign-ins."""
