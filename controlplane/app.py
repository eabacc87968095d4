"""The Flask application factory."""
from __future__ import annotations

from functools import cached_property
from typing import Callable

from flask import Flask, jsonify, request
from redis import BlockingConnectionPool, Redis

from controlplane import metrics, web
from controlplane.accounts import auth
from controlplane.api.poll_shortcut import PollShortcut
from controlplane.config import Config
from controlplane.contract.operations import documented
from controlplane.finetune.image_service import ImageFinetuneService
from controlplane.finetune.text_service import FinetuneService
from controlplane.fleet.dispatch import Dispatcher
from controlplane.http import error_handlers, request_context
from controlplane.http.fields import SessionId, refuse_nul_in_url
from controlplane.http.request_body import JSONProvider, Request
from controlplane.openai.chat import OpenAIService
from controlplane.openai.files import OpenAIFiles
from controlplane.openai.finetuning import OpenAIFineTuning
from controlplane.sessions import events
from controlplane.sessions.cache import SessionCache
from controlplane.sessions.service import SessionService
from controlplane.sessions.subscriptions import Subscriptions
from controlplane.storage import db
from controlplane.storage.filestore import from_config
from controlplane.storage.migrate import apply_migrations
from controlplane.usage import admission
from controlplane.web import error_pages
from shared import logs

REDIS_CONNECTIONS = 256  # a control-plane process's connections to Redis, besides its subscription


class HelixFlask(Flask):
    """Flask, remembering which views and hooks need wrapping to run synchronously: Flask asks
    inspect about each of them (about ten) on every request."""

    def ensure_sync(self, func: Callable) -> Callable:
        synced = self._synced.get(func)
        if synced is None:
            synced = self._synced[func] = super().ensure_sync(func)
        return synced

    @cached_property
    def _synced(self) -> dict[Callable, Callable]:
        return {}


def _refuse_nul_in_url() -> None:
    # A NUL reaches the query's values only as a raw NUL or %00: most queries need no parsing.
    query = request.environ.get("QUERY_STRING", "")
    refuse_nul_in_url(request.path, request.args if "\x00" in query or "%00" in query else None)


def create_app(config: Config | None = None, *, start_reconciler: bool = True) -> Flask:
    config = config or Config.from_env()
    if not config.database_url:
        raise RuntimeError("DATABASE_URL is not set (`helix up` sets it to the embedded server)")
    app = HelixFlask(__name__)
    app.config["HELIX"] = config
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes
    app.request_class = Request
    app.url_map.converters["session_id"] = SessionId
    app.json = JSONProvider(app)
    app.json.sort_keys = False
    app.json.max_depth = config.max_json_depth
    logs.configure()  # HELIX_LOG_FORMAT: json (default) or text
    metrics.init_app(app)  # first: it times the requests every later hook may refuse
    request_context.init_app(app, config.access_log)

    apply_migrations(config.database_url)  # safe when every replica does it at once
    error_handlers.init_app(app, pages=error_pages)
    db.init_app(app)
    auth.init_app(app, config)
    # Live event streams share one subscription's connection (sessions/subscriptions.py). A burst
    # of reads (every stream reading its session again at once, thousands of polls) waits for
    # one of REDIS_CONNECTIONS rather than opening a connection each.
    redis = Redis(connection_pool=BlockingConnectionPool.from_url(
        config.redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30,
        max_connections=REDIS_CONNECTIONS, timeout=10))
    dispatcher = Dispatcher(redis, config)
    admission.init_app(app, redis)
    filestore = from_config(config.filestore, config.s3_endpoint_url)
    finetune = FinetuneService(config, dispatcher, filestore, redis)
    sessions = SessionService(config, dispatcher, filestore)
    openai_files = OpenAIFiles(config, filestore)
    app.extensions.update(openai_files=openai_files,
                          openai_finetuning=OpenAIFineTuning(config, dispatcher, openai_files, redis))
    app.extensions.update(redis=redis, dispatcher=dispatcher, filestore=filestore, finetune_service=finetune,
                          image_finetune_service=ImageFinetuneService(config, dispatcher, filestore),
                          session_service=sessions, openai_service=OpenAIService(config, sessions, filestore, redis),
                          session_cache=SessionCache(config.database_url, config.session_cache_mb * 1024 * 1024),
                          subscriptions=Subscriptions(config.redis_url, redis),
                          event_streams=events.StreamSlots(config.max_event_streams, config.max_event_streams_per_user,
                                                           redis))

    from controlplane.api import api_keys, dashboard, openai, reference, runner, server_info, user_socket
    from controlplane.api import filestore as filestore_routes
    from controlplane.api import finetune as finetune_routes
    from controlplane.api import openai_finetuning as openai_finetuning_routes
    from controlplane.api import sessions as session_routes
    from controlplane.api import usage as usage_routes

    for bp in (session_routes.bp, openai.helix_chat, finetune_routes.bp, api_keys.bp, runner.bp, filestore_routes.bp,
               openai.bp, openai_finetuning_routes.bp, dashboard.bp, usage_routes.bp, server_info.bp, user_socket.bp,
               reference.bp):
        app.register_blueprint(bp)
    app.config["SOCK_SERVER_OPTIONS"] = user_socket.SERVER_OPTIONS
    app.before_request(_refuse_nul_in_url)
    web.init_app(app)

    # Last: it reads the status poll's route from the URL map.
    app.wsgi_app = PollShortcut(app, app.extensions["session_cache"], config.access_log)

    @app.get("/healthz")
    @documented("Whether this control-plane process answers", auth="public")
    def healthz():
        return jsonify(ok=True)

    if start_reconciler and config.reconcile_interval > 0:
        from controlplane.runners.reconciler import Reconciler

        app.extensions["reconciler"] = Reconciler(app)
        app.extensions["reconciler"].start_thread(config.reconcile_interval)
    if start_reconciler and config.usage_webhook_url:
        from controlplane.usage.webhook import UsageWebhook

        app.extensions["usage_webhook"] = UsageWebhook(app, config.usage_webhook_url, config.usage_webhook_secret)
        app.extensions["usage_webhook"].start_thread(max(1.0, config.reconcile_interval))
    return app
