"""Image fine-tunes, behind the sessions routes: a session made at once from captioned images,
its training queued for a runner of the image model. The runner's reports (metrics, checkpoints,
the final update with `lora_dir`) go through the same routes as a text fine-tune's."""
from __future__ import annotations

import io
from functools import partial
from typing import Any

import psycopg

from controlplane.config import Config
from controlplane.finetune.image_input import ImageFinetuneForm, PixelLimits, check_images
from controlplane.fleet.dispatch import Dispatcher
from controlplane.sessions import fair_share
from controlplane.sessions import store as sessions_store
from controlplane.storage import db
from controlplane.storage.filestore import Filestore, UserFiles, session_folder
from controlplane.storage.rows import SessionWithInteractions
from shared.types import Creator, DataPrepStage, InteractionState, SessionMode, SessionType


class ImageFinetuneService:
    def __init__(self, config: Config, dispatcher: Dispatcher, filestore: Filestore):
        self.config = config
        self.dispatcher = dispatcher
        self.filestore = filestore

    def create(self, conn: psycopg.Connection, user: dict[str, Any], form: ImageFinetuneForm,
               files: list[Any], model: str) -> SessionWithInteractions:
        """Every image is checked before the first is stored; a refused request stores nothing."""
        options, message, name = form.options(), form.input, form.name
        limits = PixelLimits(min_px=self.config.min_finetune_image_px,
                             per_image=self.config.max_finetune_image_pixels,
                             total=self.config.max_finetune_total_pixels)
        images = check_images(files, form.captions(), max_images=self.config.max_finetune_images, limits=limits,
                              max_name_bytes=self.config.max_name_bytes, trigger_word=options["trigger_word"])
        session_id = sessions_store.new_id()
        store = UserFiles(self.filestore, user["id"])
        # A refused request stores nothing: its images go if the session is not stored.
        db.after_rollback(conn, partial(store.remove, session_folder(session_id)))
        paths = []
        for image in images:
            path = f"{session_folder(session_id)}/images/{image.name}"
            store.write(path, io.BytesIO(image.data))
            paths.append(path)
        session = sessions_store.insert_session(
            conn, owner=user["id"], mode=SessionMode.FINETUNE, type=SessionType.IMAGE, model_name=model,
            name=name or f"fine-tune on {len(images)} images", config={"finetune": options},
            session_id=session_id)
        user_turn = sessions_store.insert_interaction(
            conn, session_id=session_id, creator=Creator.USER, mode=SessionMode.FINETUNE, message=message,
            state=InteractionState.COMPLETE, files=paths,
            metadata={"captions": {i.name: i.caption for i in images},
                      "sizes": {i.name: [i.width, i.height] for i in images}})
        system_turn = sessions_store.insert_interaction(
            conn, session_id=session_id, creator=Creator.SYSTEM, mode=SessionMode.FINETUNE,
            state=InteractionState.WAITING, data_prep_stage=DataPrepStage.FINETUNE,
            status=f"queued: waiting for a runner to train on {len(images)} images")
        interactions = [user_turn, system_turn]
        fair_share.submit(conn, self.dispatcher, session, interactions, system_turn.id)
        return session, interactions
