"""Talking to the control plane: its HTTP client (reports, downloads, retries) and the pooled HTTP
session under it."""
