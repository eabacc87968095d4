"""The Python client of the Helix-compatible platform: `Client` and `AsyncClient`."""
from helix_client.client import AsyncClient, ChatStream, Client
from helix_client.errors import HelixError, RateLimited

__all__ = ["AsyncClient", "ChatStream", "Client", "HelixError", "RateLimited"]
