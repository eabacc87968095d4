"""A plan's filestore bytes, held at the upload doors: a user's files (uploads and their sessions'
outputs) are counted by the filestore when an upload arrives, and an upload that would pass the
limit is refused before anything is stored."""
from __future__ import annotations

from flask import g, request

from controlplane.errors import InsufficientQuota
from controlplane.storage.filestore import Filestore, UserFiles
from controlplane.usage.plans import Limits


class StorageFull(InsufficientQuota):
    """An upload would take the user past their plan's filestore bytes."""

    def __init__(self, used: int, incoming: int, limit: int):
        super().__init__(f"this upload of {incoming} bytes would take your files to {used + incoming} bytes, past"
                         f" your plan's {limit}: delete files (or sessions) you no longer need first",
                         "storage_bytes", used_bytes=used)


def check_storage(filestore: Filestore) -> None:
    """Refuses an upload (the request's body) past the plan's filestore bytes, before it is stored.
    What runners write for the user (images, adapters) is counted, never refused."""
    limit = (g.user.get("plan_limits") or Limits()).storage_bytes
    if not limit:
        return
    used, incoming = UserFiles(filestore, g.user["id"]).used_bytes(), request.content_length or 0
    if used + incoming > limit:
        raise StorageFull(used, incoming, limit)
