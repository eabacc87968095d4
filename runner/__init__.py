"""The runner node: pulls jobs for the models it holds, keeps them warm, reports over HTTP.

Never imports psycopg or the control plane; needs only Redis, the control-plane URL and a token.
"""
