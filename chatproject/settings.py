"""Settings for the chat server, read from the environment.

Every integration reads its own block of variables (see the README's settings table). The
defaults run on a bare machine: SQLite, the in-memory channel layer and a filesystem Celery
transport when no services are configured.

One module on purpose (STYLE.md: one env-driven settings module), in one block per integration;
chatproject/settings_test.py only overrides values.
"""

import os
import sys
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_SECRET_KEY = "insecure-development-key-change-me"


def env(name, default=None):
    value = os.environ.get(name)
    return default if value in (None, "") else value


def env_bool(name, default=False):
    value = env(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name, default):
    value = env(name)
    return default if value is None else int(value)


def env_float(name, default):
    value = env(name)
    return default if value is None else float(value)


def env_list(name, default=""):
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


# Local state of a single-machine run (SQLite file, filesystem Celery queue): CHAT_VAR_DIR.
VAR_DIR = Path(os.environ.get("CHAT_VAR_DIR") or BASE_DIR / "var")

# --- Core -------------------------------------------------------------------------------------
CHAT_ENV = env("CHAT_ENV", "development")  # "production" turns on the start-up checks below
SECRET_KEY = env("SECRET_KEY", DEFAULT_SECRET_KEY)
DEBUG = env_bool("DEBUG", CHAT_ENV != "production")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")
# Proxies in front of the server, each appending to X-Forwarded-For (apps.core.clientaddr):
# 0 trusts no proxy header for the client address. BEHIND_TLS_PROXY (below) decides the scheme.
NUM_PROXIES = env_int("NUM_PROXIES", 0)
BEHIND_TLS_PROXY = env_bool("BEHIND_TLS_PROXY")

if CHAT_ENV == "production":
    _problems = []
    if SECRET_KEY == DEFAULT_SECRET_KEY or len(SECRET_KEY) < 50:
        _problems.append(
            "SECRET_KEY is unset, the development default, or shorter than 50 characters"
        )
    if DEBUG:
        _problems.append("DEBUG is on")
    if _problems:
        sys.stderr.write(
            "Refusing to start in production: " + "; ".join(_problems) + ".\n"
            "Set SECRET_KEY to a long random value and DEBUG=false (README, Settings).\n"
        )
        sys.exit(2)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "apps.core",
    "apps.users",
    "apps.rooms",
    "apps.messaging",
    "apps.events",
    "apps.web",
    "apps.notifications",
    "apps.moderation",
    "apps.attachments",
    "apps.integrations",
]

MIDDLEWARE = [
    "apps.events.health.HealthCheckMiddleware",
    "apps.events.observability.RequestIdMiddleware",
    "apps.core.api.ApiErrorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "apps.web.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "apps.events.observability.MetricsMiddleware",
]

ROOT_URLCONF = "chatproject.urls"
ASGI_APPLICATION = "chatproject.asgi.application"
AUTH_USER_MODEL = "users.User"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"

# --- Passwords: PASSWORD_MIN_LENGTH, PASSWORD_HASH_CONCURRENCY -------------------------------------
# Django's validators on every path that sets a password (sign-up by REST and page, the admin,
# createsuperuser, changepassword). Ten characters: NIST SP 800-63B's floor is 8; the common-
# password list and the similarity check do the rest.
PASSWORD_MIN_LENGTH = env_int("PASSWORD_MIN_LENGTH", 10)
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": PASSWORD_MIN_LENGTH},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Passwords hashed at once for one client address (log-in, token, sign-up); more: 429. 0: no bound.
PASSWORD_HASH_CONCURRENCY = env_int("PASSWORD_HASH_CONCURRENCY", 2)

# --- Database: DATABASE_URL, DATABASE_POOL_MAX -------------------------------------------------
DATABASE_URL = env("DATABASE_URL")
if DATABASE_URL:
    _db = dj_database_url.parse(DATABASE_URL, conn_max_age=0, conn_health_checks=True)
    if _db["ENGINE"] == "django.db.backends.postgresql":
        _db.setdefault("OPTIONS", {})
        _db["OPTIONS"]["pool"] = {
            "min_size": env_int("DATABASE_POOL_MIN", 2),
            "max_size": env_int("DATABASE_POOL_MAX", 20),
            "timeout": env_float("DATABASE_POOL_TIMEOUT", 10.0),
        }
    # The send path's fixed-text statements are prepared per connection (apps.core.sql).
    DATABASE_PREPARE_STATEMENTS = env_bool("DATABASE_PREPARE_STATEMENTS", True)
    if env("DATABASE_TEST_NAME"):
        _db["TEST"] = {"NAME": env("DATABASE_TEST_NAME")}
else:
    _db = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": env("SQLITE_PATH", str(VAR_DIR / "chat.sqlite3")),
        # Several local processes (server, worker) share the file: WAL and IMMEDIATE
        # transactions make writers queue instead of failing with "database is locked".
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }
DATABASES = {"default": _db}
DATABASE_BACKEND = "postgresql" if "postgresql" in _db["ENGINE"] else "sqlite"

# --- Redis: REDIS_URL, CHANNELS_PREFIX ----------------------------------------------------------
REDIS_URL = env("REDIS_URL")
CHANNELS_PREFIX = env("CHANNELS_PREFIX", "chat")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py 8 reads with a 5 s socket timeout by default, the same as
                # channels-redis's blocking pop: idle receives then fail every 5 s.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
                "prefix": CHANNELS_PREFIX,
                "capacity": env_int("CHANNELS_CAPACITY", 5000),
                "expiry": 60,
                "group_expiry": 86400,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

CACHES = {
    "default": (
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": CHANNELS_PREFIX,
            # A hung Redis must not hang requests: throttles fall back to a local count.
            "OPTIONS": {"socket_timeout": 2, "socket_connect_timeout": 2},
        }
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

# --- Celery: CELERY_BROKER_URL (defaults to REDIS_URL, else a local filesystem transport) ------
CELERY_BROKER_URL = env("CELERY_BROKER_URL", REDIS_URL or "filesystem://")
CELERY_TASK_DEFAULT_QUEUE = env("CELERY_QUEUE", "chat")
CELERY_BROKER_TRANSPORT_OPTIONS = (
    {
        "data_folder_in": str(VAR_DIR / "celery-queue"),
        "data_folder_out": str(VAR_DIR / "celery-queue"),
        "processed_folder": str(VAR_DIR / "celery-processed"),
        # kombu's exchange tables (a relative "control" folder in the working directory
        # by default: every run in a checkout changed files there).
        "control_folder": str(VAR_DIR / "celery-control"),
        "store_processed": False,
    }
    if CELERY_BROKER_URL.startswith("filesystem")
    # Every Celery key in Redis under our prefix (several deployments or test runs can share
    # one Redis, and each can clean up after itself).
    else {"visibility_timeout": 3600, "global_keyprefix": f"{CHANNELS_PREFIX}:celery:"}
)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 4
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE = {
    "outbox-sweep": {
        "task": "apps.events.tasks.sweep_outbox",
        "schedule": env_float("OUTBOX_SWEEP_SECONDS", 5.0),
    },
    "report-bodies-erase": {
        "task": "apps.moderation.tasks.erase_report_bodies",
        "schedule": env_float("REPORT_ERASE_SWEEP_SECONDS", 3600.0),
    },
    "retention-purge": {
        "task": "apps.messaging.tasks.purge_history",
        "schedule": env_float("RETENTION_SWEEP_SECONDS", 3600.0),
    },
    "notify-mentions": {
        "task": "apps.notifications.tasks.notify_mentions",
        "schedule": env_float("NOTIFY_SWEEP_SECONDS", 10.0),
    },
    "notify-email": {
        "task": "apps.notifications.tasks.email_unread_notifications",
        "schedule": env_float("NOTIFY_EMAIL_SWEEP_SECONDS", 60.0),
    },
    "erasure-sweep": {
        "task": "apps.messaging.tasks.resume_erasures",
        "schedule": env_float("ERASURE_SWEEP_SECONDS", 300.0),
    },
    "uploads-unused-purge": {
        "task": "apps.attachments.tasks.purge_unused_uploads",
        "schedule": env_float("UPLOAD_PURGE_SWEEP_SECONDS", 3600.0),
    },
}
# Erasures (apps.messaging.erasure) still unfinished this long after the request are queued
# again by the erasure sweep (also its period).
ERASURE_SWEEP_SECONDS = env_float("ERASURE_SWEEP_SECONDS", 300.0)
# Notifications (apps.notifications): the mention worker's kick debounce, and the email of
# notifications unread this many minutes (batched per user, once each).
NOTIFY_KICK_DEBOUNCE_MS = env_int("NOTIFY_KICK_DEBOUNCE_MS", 1000)
NOTIFY_EMAIL_AFTER_MINUTES = env_float("NOTIFY_EMAIL_AFTER_MINUTES", 10.0)
NOTIFY_EMAIL_SITE_URL = env("NOTIFY_EMAIL_SITE_URL", "http://localhost:8000")

# --- Email: EMAIL_HOST, EMAIL_PORT, ... (Django's SMTP backend; unset host: console) ----------
EMAIL_HOST = env("EMAIL_HOST", "")
EMAIL_BACKEND = env(
    "EMAIL_BACKEND",
    "django.core.mail.backends.smtp.EmailBackend"
    if EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend",
)
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = env_float("EMAIL_TIMEOUT", 10.0)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", "chat@localhost")
# Retention (apps.messaging.retention): the site default in days (unset: keep forever; a room's
# retention_days overrides it), events removed per transaction, and the pause between two.
RETENTION_DAYS = env_int("RETENTION_DAYS", None)
if RETENTION_DAYS is not None and RETENTION_DAYS < 1:  # 0 or less would purge everything
    sys.stderr.write(
        "Refusing to start: RETENTION_DAYS must be at least 1 (unset keeps "
        f"everything), not {RETENTION_DAYS}.\n"
    )
    sys.exit(2)
RETENTION_BATCH_SIZE = env_int("RETENTION_BATCH_SIZE", 500)
RETENTION_BATCH_PAUSE_SECONDS = env_float("RETENTION_BATCH_PAUSE_SECONDS", 0.05)

# --- Kafka: KAFKA_BOOTSTRAP_SERVERS, KAFKA_TOPIC_PREFIX, ... -----------------------------------
KAFKA_BOOTSTRAP_SERVERS = env_list("KAFKA_BOOTSTRAP_SERVERS", "")
KAFKA_TOPIC_PREFIX = env("KAFKA_TOPIC_PREFIX", "chat")
KAFKA_EVENTS_TOPIC = f"{KAFKA_TOPIC_PREFIX}.events"
KAFKA_PARTITIONS = env_int("KAFKA_PARTITIONS", 6)
KAFKA_REPLICATION_FACTOR = env_int("KAFKA_REPLICATION_FACTOR", 1)
KAFKA_BATCH_SIZE = env_int("KAFKA_BATCH_SIZE", 65536)
KAFKA_REQUEST_TIMEOUT_MS = env_int("KAFKA_REQUEST_TIMEOUT_MS", 10000)
KAFKA_SECURITY_PROTOCOL = env("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
# Producer: idempotent, acks=all; send() blocks at most KAFKA_MAX_BLOCK_MS on a missing broker.
KAFKA_MAX_BLOCK_MS = env_int("KAFKA_MAX_BLOCK_MS", 5000)
KAFKA_DELIVERY_TIMEOUT_MS = env_int("KAFKA_DELIVERY_TIMEOUT_MS", 30000)
# Consumer groups (consume_events). Tansu makes a joining member wait a full rebalance timeout
# (= max poll interval), so these stay small; raise them for slow handlers on real Kafka.
KAFKA_CONSUMER_SESSION_TIMEOUT_MS = env_int("KAFKA_CONSUMER_SESSION_TIMEOUT_MS", 10000)
KAFKA_CONSUMER_HEARTBEAT_MS = env_int("KAFKA_CONSUMER_HEARTBEAT_MS", 3000)
KAFKA_CONSUMER_MAX_POLL_INTERVAL_MS = env_int("KAFKA_CONSUMER_MAX_POLL_INTERVAL_MS", 10000)
KAFKA_CONSUMER_MAX_POLL_RECORDS = env_int("KAFKA_CONSUMER_MAX_POLL_RECORDS", 500)
# consume_events --group NAME runs the handler named here (or --handler dotted.path).
KAFKA_CONSUMER_HANDLERS = {
    "notifications": "apps.notifications.handlers.MentionNotifications",
}
# The outbox publisher (apps.events.publisher).
OUTBOX_BATCH_SIZE = env_int("OUTBOX_BATCH_SIZE", 500)
OUTBOX_FLUSH_TIMEOUT_SECONDS = env_float("OUTBOX_FLUSH_TIMEOUT_SECONDS", 15.0)
OUTBOX_RETRY_BASE_SECONDS = env_float("OUTBOX_RETRY_BASE_SECONDS", 1.0)
OUTBOX_RETRY_MAX_SECONDS = env_float("OUTBOX_RETRY_MAX_SECONDS", 30.0)
OUTBOX_LOCK_TIMEOUT_SECONDS = env_float("OUTBOX_LOCK_TIMEOUT_SECONDS", 30.0)
OUTBOX_KICK_DEBOUNCE_MS = env_int("OUTBOX_KICK_DEBOUNCE_MS", 1000)
# After a batch that emptied the outbox, the publisher waits this long before reading again, so
# a steady stream goes out in fewer, fuller batches (apps.events.publisher.publish_pending).
OUTBOX_LINGER_SECONDS = env_float("OUTBOX_LINGER_SECONDS", 0.05)
# The publisher VACUUMs the outbox table after deleting this many rows (PostgreSQL; 0: leave it
# to autovacuum, which looks once a minute): otherwise the next read of a batch has up to a
# minute of a queue table's dead rows to step over (apps.events.publisher.Vacuum).
OUTBOX_VACUUM_EVERY_ROWS = env_int("OUTBOX_VACUUM_EVERY_ROWS", 1_000)

# --- Chat behaviour and limits --------------------------------------------------------------------
SIGNUP_ENABLED = env_bool("SIGNUP_ENABLED", True)
CHAT_MESSAGE_MAX_LENGTH = 4000
# Message search (apps.messaging.search). The PostgreSQL text search configuration of the
# index: 'simple' (lower-cased words, no stemming, no stop words) suits a chat in any language;
# 'english' stems. Read when the index is created (migration 0007): changing it means
# rebuilding the column (docs/operations.md).
SEARCH_CONFIG = env("SEARCH_CONFIG", "simple")
SEARCH_QUERY_MAX_LENGTH = env_int("SEARCH_QUERY_MAX_LENGTH", 500)
# Messages an erasure redacts per transaction at most (one room locked, one message.deleted
# each); each batch is sized to take about ERASURE_BATCH_SECONDS (0: always the most), and the
# worker rests after it so as to erase no more than ERASURE_RATE messages a second (0: no rest;
# 1250: 100,000 messages in 80 s at the least) (apps.messaging.erasure.Pace).
ERASURE_BATCH_SIZE = env_int("ERASURE_BATCH_SIZE", 500)
ERASURE_BATCH_SECONDS = env_float("ERASURE_BATCH_SECONDS", 0.05)
ERASURE_RATE = env_float("ERASURE_RATE", 1250.0)
CHAT_REPLAY_LIMIT = env_int("CHAT_REPLAY_LIMIT", 500)
CHAT_MAX_FRAME_BYTES = env_int("CHAT_MAX_FRAME_BYTES", 65536)
CHAT_HEARTBEAT_SECONDS = env_int("CHAT_HEARTBEAT_SECONDS", 30)
CHAT_RATE_LIMIT_MESSAGES = env_int("CHAT_RATE_LIMIT_MESSAGES", 20)  # bucket size
CHAT_RATE_LIMIT_PER_SECOND = env_float("CHAT_RATE_LIMIT_PER_SECOND", 5.0)  # refill rate
# Smaller buckets of their own (and one token of the write bucket) for the writes that cost
# others the most: room creation, direct rooms, invites, reports (size, refill per second).
RATE_LIMIT_ROOM_CREATE = env_int("RATE_LIMIT_ROOM_CREATE", 5)
RATE_LIMIT_ROOM_CREATE_PER_SECOND = env_float("RATE_LIMIT_ROOM_CREATE_PER_SECOND", 1 / 60)
RATE_LIMIT_DM_OPEN = env_int("RATE_LIMIT_DM_OPEN", 10)
RATE_LIMIT_DM_OPEN_PER_SECOND = env_float("RATE_LIMIT_DM_OPEN_PER_SECOND", 1 / 30)
RATE_LIMIT_INVITE = env_int("RATE_LIMIT_INVITE", 20)
RATE_LIMIT_INVITE_PER_SECOND = env_float("RATE_LIMIT_INVITE_PER_SECOND", 1 / 6)
RATE_LIMIT_REPORT = env_int("RATE_LIMIT_REPORT", 5)
RATE_LIMIT_REPORT_PER_SECOND = env_float("RATE_LIMIT_REPORT_PER_SECOND", 1 / 60)
# Uploads (POST /api/uploads/): a bucket of their own besides the write bucket.
RATE_LIMIT_UPLOAD = env_int("RATE_LIMIT_UPLOAD", 20)
RATE_LIMIT_UPLOAD_PER_SECOND = env_float("RATE_LIMIT_UPLOAD_PER_SECOND", 1 / 6)
# Read receipts: their own, generous bucket (they never take from the write bucket).
RATE_LIMIT_READ = env_int("RATE_LIMIT_READ", 60)
RATE_LIMIT_READ_PER_SECOND = env_float("RATE_LIMIT_READ_PER_SECOND", 10.0)
# Typing frames, whatever their state, per user and room (issue 12: true/false flooding).
CHAT_TYPING_RATE_LIMIT = env_int("CHAT_TYPING_RATE_LIMIT", 5)
CHAT_TYPING_RATE_LIMIT_PER_SECOND = env_float("CHAT_TYPING_RATE_LIMIT_PER_SECOND", 0.5)
# A report's copy of the reported body is erased this many days after the report is handled.
REPORT_RETENTION_DAYS = env_int("REPORT_RETENTION_DAYS", 30)
CHAT_RATE_LIMIT_STRIKES = env_int("CHAT_RATE_LIMIT_STRIKES", 10)  # rate_limited errors before 4429
# `subscribe` frames per user: a token bucket like the messages' (a reconnect subscribes to
# every room at once, hence the size).
CHAT_SUBSCRIBE_RATE_LIMIT = env_int("CHAT_SUBSCRIBE_RATE_LIMIT", 200)
CHAT_SUBSCRIBE_RATE_PER_SECOND = env_float("CHAT_SUBSCRIBE_RATE_PER_SECOND", 5.0)
# A `subscribe` with `since` waits this long for the socket's previous replay to leave the
# server, then is refused (rate_limited).
CHAT_REPLAY_WAIT_SECONDS = env_float("CHAT_REPLAY_WAIT_SECONDS", 2.0)
# Frames received and not yet handled per socket; at this many the socket is not read.
CHAT_INBOUND_QUEUE_LIMIT = env_int("CHAT_INBOUND_QUEUE_LIMIT", 64)
# A process compares its users' rights versions with Redis this often (apps.users.rights; the
# change itself arrives at once through the channel layer, this catches a lost message).
CHAT_RIGHTS_CHECK_SECONDS = env_float("CHAT_RIGHTS_CHECK_SECONDS", 5.0)
CHAT_MAX_ROOMS_PER_SOCKET = env_int("CHAT_MAX_ROOMS_PER_SOCKET", 100)
CHAT_MAX_SOCKETS_PER_USER = env_int("CHAT_MAX_SOCKETS_PER_USER", 20)
CHAT_SEND_QUEUE_LIMIT = env_int("CHAT_SEND_QUEUE_LIMIT", 2000)  # per socket, then disconnect
CHAT_SHUTDOWN_GRACE_SECONDS = env_float("CHAT_SHUTDOWN_GRACE_SECONDS", 5.0)
# HTTP deadlines (chatproject.serve): request line and headers from connect (or from the last
# response on a kept-alive connection), and the body from the headers; then 408 and close.
CHAT_HTTP_HEADER_TIMEOUT_SECONDS = env_float("CHAT_HTTP_HEADER_TIMEOUT_SECONDS", 10.0)
CHAT_HTTP_BODY_TIMEOUT_SECONDS = env_float("CHAT_HTTP_BODY_TIMEOUT_SECONDS", 30.0)
# Real-time (apps.messaging.connection): a socket whose unsent backlog passes
# CHAT_SEND_QUEUE_LIMIT frames or CHAT_SEND_BUFFER_BYTES is dropped (close 1013) and resumes.
CHAT_SEND_BUFFER_BYTES = env_int("CHAT_SEND_BUFFER_BYTES", 8 * 1024 * 1024)
CHAT_SOCKET_SEND_BUFFER = env_int("CHAT_SOCKET_SEND_BUFFER", 0)  # SO_SNDBUF; 0: kernel autotuning
CHAT_TYPING_THROTTLE_SECONDS = env_float("CHAT_TYPING_THROTTLE_SECONDS", 3.0)
CHAT_AWAY_SECONDS = env_float("CHAT_AWAY_SECONDS", 300.0)  # no action frame for this long: away
CHAT_GAP_GRACE_SECONDS = env_float("CHAT_GAP_GRACE_SECONDS", 0.1)  # wait before filling a gap
CHAT_GAP_CHECK_SECONDS = env_float("CHAT_GAP_CHECK_SECONDS", 2.0)  # lost-message check period
CHAT_GROUP_REFRESH_SECONDS = env_float("CHAT_GROUP_REFRESH_SECONDS", 30.0)
CHAT_DB_THREADS = env_int("CHAT_DB_THREADS", 8)  # database thread pool of a server process
# Group commit of message.send frames (apps.messaging.sendqueue): sends per transaction at most,
# and transactions in flight at once per process (each for its own share of the rooms; one
# measured best with CHAT_SEND_ASYNC_DB, see bench/RESULTS.md).
CHAT_SEND_BATCH_MAX = env_int("CHAT_SEND_BATCH_MAX", 200)
CHAT_SEND_BATCH_CONCURRENCY = env_int("CHAT_SEND_BATCH_CONCURRENCY", 1)
# The least time from one batch's start to the next's in a lane, in milliseconds (0: none): a
# send to an idle lane goes at once, but under steady load a lane commits at most every
# interval, so its batches are bigger and each send's share of a transaction smaller.
CHAT_SEND_BATCH_INTERVAL_MS = env_float("CHAT_SEND_BATCH_INTERVAL_MS", 10.0)
# message.send frames of one socket waiting for their batch at once (the next frame is read
# meanwhile; a socket's sends still commit in its order); the socket's other frames wait for
# them (apps.messaging.consumers.ChatConsumer.on_send).
CHAT_SEND_PIPELINE = env_int("CHAT_SEND_PIPELINE", 16)
# On PostgreSQL each lane runs its batch on its own asyncio connection (off: the thread pool).
CHAT_SEND_ASYNC_DB = env_bool("CHAT_SEND_ASYNC_DB", True)
# Allocations between collections of the youngest GC generation in a server process (0: 700,
# CPython's default); start-up objects are frozen either way (chatproject.serve.tune_gc).
CHAT_GC_THRESHOLD = env_int("CHAT_GC_THRESHOLD", 20000)
CHAT_REDIS_CONCURRENCY = env_int("CHAT_REDIS_CONCURRENCY", 32)  # Redis calls in flight per process
# Rooms followed by more sockets than this on a process get no presence.changed (n² frames).
CHAT_PRESENCE_MAX_SUBSCRIBERS = env_int("CHAT_PRESENCE_MAX_SUBSCRIBERS", 100)

# --- Integrations: tokens, bots, webhooks (PROTOCOL §10; apps.users.tokens, apps.integrations) ---
TOKEN_LAST_USED_SECONDS = env_float("TOKEN_LAST_USED_SECONDS", 60.0)  # last_used_at precision
# Outgoing webhook targets: host names (`hooks.example.com`, `.example.com` for a domain and its
# subdomains), IP addresses or networks (`10.1.0.0/16`); `*` any host whose addresses are all
# public. Private, loopback, link-local and other non-public addresses are refused unless
# their host name or address is listed here explicitly (checked after DNS resolution).
WEBHOOK_ALLOWED_HOSTS = env_list("WEBHOOK_ALLOWED_HOSTS", "*")
WEBHOOK_TIMEOUT_SECONDS = env_float("WEBHOOK_TIMEOUT_SECONDS", 10.0)  # connect + answer
WEBHOOK_CONCURRENCY = env_int("WEBHOOK_CONCURRENCY", 2)  # deliveries in flight per endpoint
WEBHOOK_BATCH_EVENTS = env_int("WEBHOOK_BATCH_EVENTS", 500)  # events per POST at most
WEBHOOK_POLL_SECONDS = env_float("WEBHOOK_POLL_SECONDS", 0.1)  # the worker reads the log so often
WEBHOOK_RETRY_BASE_SECONDS = env_float("WEBHOOK_RETRY_BASE_SECONDS", 1.0)
WEBHOOK_RETRY_MAX_SECONDS = env_float("WEBHOOK_RETRY_MAX_SECONDS", 300.0)
WEBHOOK_MAX_PER_USER = env_int("WEBHOOK_MAX_PER_USER", 20)

# --- REST --------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        # DRF's authtoken keys and the scoped API tokens (apps.users.tokens).
        "apps.users.tokens.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_RATES": {
        "signup": env("THROTTLE_SIGNUP", "20/hour"),
        "token": env("THROTTLE_TOKEN", "30/minute"),
        "export": env("THROTTLE_EXPORT", "10/hour"),
    },
    # Every write takes from the shared per-user buckets (apps.users.ratelimit).
    "DEFAULT_THROTTLE_CLASSES": ["apps.users.throttles.WriteThrottle"],
    "EXCEPTION_HANDLER": "apps.core.api.exception_handler",
    # DRF's defaults, with its JSON parser bounded and its browsable API under the strict CSP
    # (apps.messaging.api_formats).
    "DEFAULT_PARSER_CLASSES": [
        "apps.messaging.api_formats.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "apps.messaging.api_formats.BrowsableAPIRenderer",
    ],
    # DRF's own get_ident agrees with apps.core.clientaddr (our throttles call that).
    "NUM_PROXIES": NUM_PROXIES,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Chat API",
    "DESCRIPTION": "REST side of the chat server. See docs/protocol.md for the wire contract.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI served from our own static files: the docs page works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Every operation documents the contract's common errors (chatproject/openapi.py).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "chatproject.openapi.document_errors",
    ],
}

# --- Observability: METRICS_ALLOWED_IPS, METRICS_TOKEN, LOG_FORMAT, LOG_LEVEL ------------------
# Matched against the TCP peer of requests that came straight to the server (no proxy header);
# production has no default: a token or an explicit list.
METRICS_ALLOWED_IPS = env_list(
    "METRICS_ALLOWED_IPS", "" if CHAT_ENV == "production" else "127.0.0.1,::1"
)
METRICS_TOKEN = env("METRICS_TOKEN")
PROMETHEUS_MULTIPROC_DIR = env("PROMETHEUS_MULTIPROC_DIR")
# /readyz counts the unpublished outbox rows at most this often per process.
READYZ_OUTBOX_CACHE_SECONDS = env_float("READYZ_OUTBOX_CACHE_SECONDS", 1.0)
LOG_FORMAT = env("LOG_FORMAT", "text")
LOG_LEVEL = env("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "apps.events.observability.ContextFilter"}},
    "formatters": {
        "json": {"()": "apps.events.observability.JsonFormatter"},
        "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["context"],
            "formatter": "json" if LOG_FORMAT == "json" else "text",
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        "kafka": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
    },
}

# --- Security (production) ---------------------------------------------------------------------
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", CHAT_ENV == "production")
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", CHAT_ENV == "production")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", CHAT_ENV == "production")
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if CHAT_ENV == "production" else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = CHAT_ENV == "production"
SECURE_HSTS_PRELOAD = CHAT_ENV == "production"
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if BEHIND_TLS_PROXY else None
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
# WebSocket handshakes not over TLS are refused (chatproject.wsguard; what counts as TLS:
# BEHIND_TLS_PROXY's X-Forwarded-Proto, else the socket).
CHAT_WS_REQUIRE_TLS = env_bool("CHAT_WS_REQUIRE_TLS", CHAT_ENV == "production")
SESSION_COOKIE_HTTPONLY = True

# --- Attachments (apps.attachments): UPLOAD_*, UPLOAD_S3_* ---------------------------------------
# Files are kept through Django's storage API, storage alias "uploads": the filesystem under
# UPLOAD_ROOT (default CHAT_VAR_DIR/uploads, never served by a public path) or, with
# UPLOAD_S3_BUCKET set, S3-compatible object storage (django-storages, boto3). Downloads go
# through the authorized view (GET /api/uploads/{id}/file/); with S3 it answers a presigned URL.
UPLOAD_MAX_BYTES = env_int("UPLOAD_MAX_BYTES", 10 * 1024 * 1024)
# Content types accepted, as sniffed from the bytes (apps.attachments.sniff); others are 415.
UPLOAD_ALLOWED_TYPES = env_list(
    "UPLOAD_ALLOWED_TYPES",
    "image/png,image/jpeg,image/gif,image/webp,application/pdf,text/plain,application/zip,"
    "audio/mpeg,audio/ogg,video/mp4,video/webm",
)
UPLOAD_MAX_PIXELS = env_int("UPLOAD_MAX_PIXELS", 25_000_000)  # larger images are refused
UPLOAD_MAX_PER_MESSAGE = env_int("UPLOAD_MAX_PER_MESSAGE", 10)
UPLOAD_THUMBNAIL_SIZE = env_int("UPLOAD_THUMBNAIL_SIZE", 320)  # the longer side, in pixels
UPLOAD_URL_MAX_AGE = env_int("UPLOAD_URL_MAX_AGE", 3600)  # signed links, seconds
UPLOAD_UNUSED_HOURS = env_float("UPLOAD_UNUSED_HOURS", 24.0)  # then an unsent upload is purged
UPLOAD_ROOT = env("UPLOAD_ROOT", str(VAR_DIR / "uploads"))
UPLOAD_S3_BUCKET = env("UPLOAD_S3_BUCKET")
UPLOAD_S3_ENDPOINT_URL = env("UPLOAD_S3_ENDPOINT_URL")  # e.g. MinIO, Ceph; unset: AWS
UPLOAD_S3_REGION = env("UPLOAD_S3_REGION", "us-east-1")
UPLOAD_S3_ACCESS_KEY_ID = env("UPLOAD_S3_ACCESS_KEY_ID")
UPLOAD_S3_SECRET_ACCESS_KEY = env("UPLOAD_S3_SECRET_ACCESS_KEY")
STORAGES["uploads"] = (
    {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": UPLOAD_S3_BUCKET,
            "endpoint_url": UPLOAD_S3_ENDPOINT_URL,
            "region_name": UPLOAD_S3_REGION,
            "access_key": UPLOAD_S3_ACCESS_KEY_ID,
            "secret_key": UPLOAD_S3_SECRET_ACCESS_KEY,
            "default_acl": None,  # the bucket's (private): objects are never public
            "querystring_auth": True,
            "querystring_expire": UPLOAD_URL_MAX_AGE,
            "file_overwrite": False,
            "addressing_style": "path" if UPLOAD_S3_ENDPOINT_URL else None,
        },
    }
    if UPLOAD_S3_BUCKET
    else {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": UPLOAD_ROOT, "base_url": "/api/uploads/"},
    }
)
