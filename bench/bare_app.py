"""P1's baseline: a Flask route that does nothing (no auth, no database), served by the control
plane's own gunicorn command line, so the two differ in the application alone."""
from __future__ import annotations

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/bare")
def bare():
    return jsonify(ok=True)
