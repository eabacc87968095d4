"""Control-plane settings, read from environment variables with documented defaults."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from PIL import Image

from shared.finetune import DOCUMENT_MAX_INFLATED_BYTES
from shared.memory import needs_from_env
from shared.settings import SettingError, env_float, env_int

DEFAULT_TEXT_MODEL = "smollm2-135m-instruct"
DEFAULT_IMAGE_MODEL = "helix/tiny-sd"


def _list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _flag(env: dict[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingError(f"{name} must be 1 or 0 (true or false), got {value!r}")


# What metering counts of each finished job (usage/metering.py), each of which the price table may price.
PRICED_UNITS = ("prompt_tokens", "completion_tokens", "images", "runner_seconds", "training_tokens", "stored_bytes")


def _prices(text: str) -> dict[str, dict[str, float]]:
    """HELIX_PRICES: {"*" | kind | model | "model kind": {unit: credits per unit}}."""
    if not text.strip():
        return {}
    try:
        table = json.loads(text)
    except ValueError as err:
        raise SettingError(f"HELIX_PRICES must be JSON: {err}") from None
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise SettingError('HELIX_PRICES must be an object of objects: {"*": {"completion_tokens": 0.002}, ...}')
    for scope, units in table.items():
        for unit, price in units.items():
            if unit not in PRICED_UNITS:
                raise SettingError(f"HELIX_PRICES[{scope!r}]: unknown unit {unit!r}: use {', '.join(PRICED_UNITS)}")
            if isinstance(price, bool) or not isinstance(price, (int, float)) or not 0 <= price < 1e9:
                raise SettingError(f"HELIX_PRICES[{scope!r}][{unit!r}] must be a number of credits from 0, got {price!r}")
    return {scope: {unit: float(p) for unit, p in units.items()} for scope, units in table.items()}


@dataclass
class Config:
    # PostgreSQL and Redis/Valkey; `helix up` sets both to its embedded servers.
    database_url: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Models users may ask for; the first of each list is the default for its type.
    text_models: list[str] = field(default_factory=lambda: [DEFAULT_TEXT_MODEL])
    image_models: list[str] = field(default_factory=lambda: [DEFAULT_IMAGE_MODEL])
    # Largest request body accepted (uploads included).
    max_upload_bytes: int = 100 * 1024 * 1024
    # Longest chat input accepted, in characters.
    max_input_chars: int = 100_000
    # Filestore: a local directory, or s3://bucket/prefix (S3-compatible endpoint below).
    filestore: str = ".helix/filestore"
    s3_endpoint_url: str = ""
    # Live event streams one control-plane process holds at once: a safety limit on memory (a
    # stream costs a greenlet, its socket and a queue on the process's one subscription). A
    # gunicorn worker takes this many connections and 1,000 more. Past it, a stream request gets
    # 503 and can poll.
    max_event_streams: int = 12_000
    # The most one user may hold on every replica together (past it, 429): no user can take every
    # slot. A plan may allow fewer (event_streams).
    max_event_streams_per_user: int = 1000
    # Seconds between reconciler passes in each replica; 0 turns it off.
    reconcile_interval: float = 5.0
    # How long a queued job may run before RQ gives up on it.
    text_job_timeout: int = 600
    image_job_timeout: int = 1800
    dataprep_job_timeout: int = 3 * 3600
    finetune_job_timeout: int = 12 * 3600
    # What a runner may announce: at most this many model names per session type.
    max_runner_models: int = 16
    # Runner ids one runner token may have live at once (seen within runner_ttl).
    max_runners_per_token: int = 64
    # Seconds after its last report that a runner is forgotten: its models are no longer offered.
    runner_ttl: float = 300.0
    # Seconds without a report after which a runner shows as `gone` in listings, the dashboard and
    # metrics: three of the runners' default report interval (HELIX_REGISTER_INTERVAL, 5 s). Its work
    # is recovered sooner, by the reconciler, once its workers' heartbeats stop (8 s).
    runner_gone_seconds: float = 15.0
    # A bearer token /metrics asks for; empty: /metrics is open (scrapers inside the cluster).
    metrics_token: str = ""
    # Which requests get an access log record: writes (non-GET, and server errors), all, off.
    access_log: str = "writes"
    # What becomes of a deleted user's usage records: deleted with them, or kept with no trace of
    # who they were ("anonymise": for bills and totals that must add up after an account goes).
    deleted_user_usage: str = "delete"
    # Largest file a runner may upload (adapters, training checkpoints).
    max_runner_upload_bytes: int = 8 * 1024**3
    # Fine-tunes: most documents (files and URLs) in one session.
    max_finetune_documents: int = 50
    # Retrieval: most chunks one session's index may hold (a plan's index_chunks limits a user's total).
    max_index_chunks: int = 20_000
    # Most bytes a fine-tune document's archive (.docx) may inflate to, its members together:
    # read from the archive's directory, without inflating anything.
    max_document_inflated_bytes: int = DOCUMENT_MAX_INFLATED_BYTES
    # OpenAI-style fine-tuning files (POST /v1/files): largest file, most examples (lines) in one.
    finetune_file_max_bytes: int = 16 * 1024 * 1024
    finetune_file_max_examples: int = 10_000
    # Image fine-tunes: most images in one session, and the fewest pixels on an image's shorter
    # side (each is scaled to the model's resolution: 64 px tiny, 512 SD 1.5, 1024 SDXL).
    max_finetune_images: int = 50
    min_finetune_image_px: int = 256
    # Most pixels (width x height) an image may decode to, and all of one request's images
    # together: a small file can claim a huge picture (a decompression bomb), and decoding costs
    # the control plane and then the runner time and memory by the pixel (~12 ns and 4 bytes each
    # here: a 40-megapixel image is half a second and 160 MB). 40 megapixels is past an ordinary
    # camera's photo; 1,000 megapixels is 50 photos of 20 megapixels, ~12 s of decoding.
    max_finetune_image_pixels: int = 40_000_000
    max_finetune_total_pixels: int = 1_000_000_000
    # Longest file or folder name in the filestore, in UTF-8 bytes: most filesystems stop at 255.
    max_name_bytes: int = 200
    # Deepest nesting of arrays and objects a JSON body may have (deeper: 400, never a RecursionError).
    max_json_depth: int = 64
    # Memory each kind of work on a model needs (shared/memory.py's table, HELIX_MEMORY_NEEDS over
    # it): work no live runner serving its model could ever hold is refused at once.
    memory_needs: dict = field(default_factory=lambda: needs_from_env({}))
    # The web app. The key that signs session cookies (every replica needs the same one): empty,
    # one is made once and kept in the database.
    secret_key: str = ""
    # Whether anyone may create an account on the sign-up page (off: admins create users).
    allow_sign_up: bool = False
    # The session cookie's Secure flag: "auto" sets it on requests that came over https.
    cookie_secure: str = "auto"
    # How long a browser stays signed in.
    sign_in_days: float = 14.0
    # Failed sign-ins for one email from one address within 15 minutes before its password is not
    # even checked (429) until the window passes: guessing passwords stays slow (an address gets
    # 5 times as many over all emails, an email 10 times as many from anywhere: web/sign_in.py).
    max_failed_sign_ins: int = 10
    # The price table (HELIX_PRICES, JSON): credits per unit of use, by "*", a kind of work, a
    # model, or "model kind", the most specific winning per unit (usage/prices.py). Empty: free.
    prices: dict[str, dict[str, float]] = field(default_factory=dict)
    # Where each usage record is posted for billing (HELIX_USAGE_WEBHOOK_URL), signed with
    # HMAC-SHA256 of the body under HELIX_USAGE_WEBHOOK_SECRET; empty: not posted.
    usage_webhook_url: str = ""
    usage_webhook_secret: str = ""
    # Memory each control-plane process gives to recent status-poll answers (sessions/cache.py),
    # in MiB; 0 turns the copy off and every poll reads PostgreSQL.
    session_cache_mb: int = 64
    # How long an OpenAI-compatible call waits for its reply before answering 504; the session
    # goes on, and the error names it for polling.
    openai_reply_seconds: float = 600.0
    # What one OpenAI-style request may ask of the text engine besides its text (openai/input.py's
    # EngineCostLimits says why): the JSON bytes of a response_format schema, the enum values it
    # offers in all, and the bytes of all its stop strings together.
    max_schema_bytes: int = 32 * 1024
    max_schema_enum_entries: int = 1000
    max_stop_bytes: int = 1024

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Config":
        env = dict(os.environ if env is None else env)
        c = cls()
        c.database_url = env.get("DATABASE_URL", c.database_url)
        c.redis_url = env.get("REDIS_URL", c.redis_url)
        if env.get("HELIX_TEXT_MODELS"):
            c.text_models = _list(env["HELIX_TEXT_MODELS"])
        if env.get("HELIX_IMAGE_MODELS"):
            c.image_models = _list(env["HELIX_IMAGE_MODELS"])
        c.max_upload_bytes = env_int(env, "HELIX_MAX_UPLOAD_BYTES", c.max_upload_bytes)
        c.max_input_chars = env_int(env, "HELIX_MAX_INPUT_CHARS", c.max_input_chars)
        c.max_runner_upload_bytes = env_int(env, "HELIX_MAX_RUNNER_UPLOAD_BYTES", c.max_runner_upload_bytes)
        c.max_runner_models = env_int(env, "HELIX_MAX_RUNNER_MODELS", c.max_runner_models)
        c.max_runners_per_token = env_int(env, "HELIX_MAX_RUNNERS_PER_TOKEN", c.max_runners_per_token)
        c.runner_ttl = env_float(env, "HELIX_RUNNER_TTL", c.runner_ttl)
        c.runner_gone_seconds = env_float(env, "HELIX_RUNNER_GONE_SECONDS", c.runner_gone_seconds)
        if not 1 <= c.runner_gone_seconds <= 86400:
            raise SettingError(f"HELIX_RUNNER_GONE_SECONDS must be from 1 to 86400, got {c.runner_gone_seconds:g}")
        c.metrics_token = env.get("HELIX_METRICS_TOKEN", c.metrics_token)
        c.access_log = env.get("HELIX_ACCESS_LOG", c.access_log).strip().lower() or c.access_log
        if c.access_log not in ("writes", "all", "off"):
            raise SettingError(f"HELIX_ACCESS_LOG must be writes, all or off, got {c.access_log[:40]!r}")
        c.deleted_user_usage = env.get("HELIX_DELETED_USER_USAGE", c.deleted_user_usage).strip().lower() \
            or c.deleted_user_usage
        if c.deleted_user_usage not in ("delete", "anonymise"):
            raise SettingError("HELIX_DELETED_USER_USAGE must be delete or anonymise,"
                               f" got {c.deleted_user_usage[:40]!r}")
        c.max_finetune_documents = env_int(env, "HELIX_MAX_FINETUNE_DOCUMENTS", c.max_finetune_documents)
        c.max_index_chunks = env_int(env, "HELIX_MAX_INDEX_CHUNKS", c.max_index_chunks)
        if c.max_index_chunks < 1:
            raise SettingError("HELIX_MAX_INDEX_CHUNKS must be at least 1")
        c.max_document_inflated_bytes = env_int(env, "HELIX_MAX_DOCUMENT_INFLATED_BYTES", c.max_document_inflated_bytes)
        if c.max_document_inflated_bytes < 1:
            raise SettingError("HELIX_MAX_DOCUMENT_INFLATED_BYTES must be at least 1")
        c.finetune_file_max_bytes = env_int(env, "HELIX_FINETUNE_FILE_MAX_BYTES", c.finetune_file_max_bytes)
        c.finetune_file_max_examples = env_int(env, "HELIX_FINETUNE_FILE_MAX_EXAMPLES", c.finetune_file_max_examples)
        if min(c.finetune_file_max_bytes, c.finetune_file_max_examples) < 1:
            raise SettingError("HELIX_FINETUNE_FILE_MAX_BYTES and HELIX_FINETUNE_FILE_MAX_EXAMPLES must be at least 1")
        c.max_finetune_images = env_int(env, "HELIX_MAX_FINETUNE_IMAGES", c.max_finetune_images)
        c.min_finetune_image_px = env_int(env, "HELIX_MIN_FINETUNE_IMAGE_PX", c.min_finetune_image_px)
        c.max_finetune_image_pixels = env_int(env, "HELIX_MAX_FINETUNE_IMAGE_PIXELS", c.max_finetune_image_pixels)
        # Pillow will not even open a picture past twice its own limit.
        if not 1 <= c.max_finetune_image_pixels <= 2 * Image.MAX_IMAGE_PIXELS:
            raise SettingError(f"HELIX_MAX_FINETUNE_IMAGE_PIXELS must be from 1 to {2 * Image.MAX_IMAGE_PIXELS},"
                               f" got {c.max_finetune_image_pixels}")
        c.max_finetune_total_pixels = env_int(env, "HELIX_MAX_FINETUNE_TOTAL_PIXELS", c.max_finetune_total_pixels)
        if c.max_finetune_total_pixels < 1:
            raise SettingError("HELIX_MAX_FINETUNE_TOTAL_PIXELS must be at least 1")
        c.max_name_bytes = env_int(env, "HELIX_MAX_NAME_BYTES", c.max_name_bytes)
        if not 1 <= c.max_name_bytes <= 255:
            raise SettingError(f"HELIX_MAX_NAME_BYTES must be between 1 and 255, got {c.max_name_bytes}")
        c.max_json_depth = env_int(env, "HELIX_MAX_JSON_DEPTH", c.max_json_depth)
        c.memory_needs = needs_from_env(env)
        c.filestore = env.get("HELIX_FILESTORE", c.filestore)
        c.s3_endpoint_url = env.get("HELIX_S3_ENDPOINT_URL", c.s3_endpoint_url)
        c.reconcile_interval = env_float(env, "HELIX_RECONCILE_INTERVAL", c.reconcile_interval)
        c.max_event_streams = env_int(env, "HELIX_MAX_EVENT_STREAMS", c.max_event_streams)
        c.max_event_streams_per_user = env_int(env, "HELIX_MAX_EVENT_STREAMS_PER_USER", c.max_event_streams_per_user)
        c.secret_key = env.get("HELIX_SECRET_KEY", c.secret_key)
        c.allow_sign_up = _flag(env, "HELIX_ALLOW_SIGN_UP", c.allow_sign_up)
        c.cookie_secure = env.get("HELIX_COOKIE_SECURE", c.cookie_secure).strip().lower()
        if c.cookie_secure not in ("auto", "true", "false"):
            raise SettingError(f"HELIX_COOKIE_SECURE must be auto, true or false, got {c.cookie_secure!r}")
        c.sign_in_days = env_float(env, "HELIX_SIGN_IN_DAYS", c.sign_in_days)
        c.max_failed_sign_ins = env_int(env, "HELIX_MAX_FAILED_SIGN_INS", c.max_failed_sign_ins)
        c.prices = _prices(env.get("HELIX_PRICES", ""))
        c.usage_webhook_url = env.get("HELIX_USAGE_WEBHOOK_URL", "").strip()
        c.usage_webhook_secret = env.get("HELIX_USAGE_WEBHOOK_SECRET", "")
        if c.usage_webhook_url and not c.usage_webhook_url.startswith(("http://", "https://")):
            raise SettingError(f"HELIX_USAGE_WEBHOOK_URL must be an http(s) URL, got {c.usage_webhook_url[:80]!r}")
        if c.usage_webhook_url and len(c.usage_webhook_secret) < 16:
            raise SettingError("HELIX_USAGE_WEBHOOK_SECRET must be set, at least 16 characters, to sign the webhook")
        c.session_cache_mb = env_int(env, "HELIX_SESSION_CACHE_MB", c.session_cache_mb)
        if c.session_cache_mb < 0:
            raise SettingError("HELIX_SESSION_CACHE_MB must be 0 (off) or more")
        c.openai_reply_seconds = env_float(env, "HELIX_OPENAI_REPLY_SECONDS", c.openai_reply_seconds)
        if not 1 <= c.openai_reply_seconds <= 86400:
            raise SettingError(f"HELIX_OPENAI_REPLY_SECONDS must be from 1 to 86400, got {c.openai_reply_seconds:g}")
        c.max_schema_bytes = env_int(env, "HELIX_MAX_SCHEMA_BYTES", c.max_schema_bytes)
        c.max_schema_enum_entries = env_int(env, "HELIX_MAX_SCHEMA_ENUM_ENTRIES", c.max_schema_enum_entries)
        c.max_stop_bytes = env_int(env, "HELIX_MAX_STOP_BYTES", c.max_stop_bytes)
        if min(c.max_schema_bytes, c.max_schema_enum_entries, c.max_stop_bytes) < 1:
            raise SettingError("HELIX_MAX_SCHEMA_BYTES, HELIX_MAX_SCHEMA_ENUM_ENTRIES and HELIX_MAX_STOP_BYTES"
                               " must be at least 1")
        if c.sign_in_days <= 0:
            raise SettingError("HELIX_SIGN_IN_DAYS must be more than 0")
        return c
