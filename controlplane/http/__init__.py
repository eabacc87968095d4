"""Request plumbing shared by every route: the fields of a form, body limits and parsing, request
context and logs, error handlers, and the gunicorn server."""
