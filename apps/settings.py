"""flopwatch settings: one file, every value from the environment, refused at start-up if bad.

See the configuration reference in README.md. ``FLOPWATCH_ENV`` picks the defaults:
``development`` (the demo: SQLite, no Redis needed, debug on), ``test`` and ``production``
(secure cookies, HSTS, a real SECRET_KEY required).
"""

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from apps.core.config import Env
from apps.schedule import BEAT_SCHEDULE

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(Env().str("FLOPWATCH_VAR_DIR", str(BASE_DIR / "var")))

env = Env()

FLOPWATCH_ENV = env.choice(
    "FLOPWATCH_ENV", "development", choices=("development", "test", "production")
)
PRODUCTION = FLOPWATCH_ENV == "production"

DEBUG = env.bool("FLOPWATCH_DEBUG", FLOPWATCH_ENV == "development")

_DEV_SECRET = "django-insecure-flopwatch-development-only-key-never-use-in-production"
SECRET_KEY = env.str("SECRET_KEY", "" if PRODUCTION else _DEV_SECRET)
if PRODUCTION and (len(SECRET_KEY) < 50 or SECRET_KEY == _DEV_SECRET):
    raise ImproperlyConfigured(
        "SECRET_KEY: production needs a random key of at least 50 characters "
        '(python -c "import secrets; print(secrets.token_urlsafe(64))")'
    )

ALLOWED_HOSTS = env.list(
    "ALLOWED_HOSTS", [] if PRODUCTION else ["localhost", "127.0.0.1", "[::1]", "testserver"]
)
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "ninja",
    "apps.core",
    "apps.fleet",
    "apps.tenancy",
    "apps.telemetry",
    "apps.waste",
    "apps.chargeback",
    "apps.dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "apps.core.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "apps.urls"
WSGI_APPLICATION = "apps.wsgi.application"

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
                "apps.core.context_processors.flopwatch",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------------------------
DATABASES = {"default": env.database("DATABASE_URL", f"sqlite:///{VAR_DIR / 'flopwatch.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not :memory:, so a real Celery worker started by a test sees the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
    # WAL lets the web process read while a worker writes; the busy timeout rides out the
    # short write locks instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
    }
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("FLOPWATCH_DB_CONN_MAX_AGE", 60))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Auth -------------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
# Paths that authenticate by token (agents, schedulers, API clients) or not at all (health).
LOGIN_EXEMPT_PREFIXES = ("/api/", "/healthz", "/static/", "/login/", "/findings/act/")

# --- Time, language, static -------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = not PRODUCTION
if not PRODUCTION:
    # WhiteNoise warns when STATIC_ROOT is missing; in development it serves from the finders.
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)

# --- E-mail -----------------------------------------------------------------------------------
vars().update(env.email("EMAIL_URL", "smtp://localhost:25" if PRODUCTION else "consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", "flopwatch <flopwatch@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- Redis and Celery -------------------------------------------------------------------------
REDIS_URL = env.redis_url("REDIS_URL")
CELERY_DATA_DIR = VAR_DIR / "celery"
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
else:
    # No server needed for the demo: Celery's filesystem transport passes messages as files.
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_DATA_DIR / "queue"),
        "data_folder_out": str(CELERY_DATA_DIR / "queue"),
        "processed_folder": str(CELERY_DATA_DIR / "processed"),
        # Exchange tables; the default is ./control in whatever folder the process started.
        "control_folder": str(CELERY_DATA_DIR / "control"),
        "store_processed": False,
    }
    CELERY_RESULT_BACKEND = f"file://{CELERY_DATA_DIR / 'results'}"
    # Celery checks the folders exist at start and stops the worker when they do not.
    for _folder in ("queue", "processed", "results", "control"):
        (CELERY_DATA_DIR / _folder).mkdir(parents=True, exist_ok=True)
CELERY_TASK_DEFAULT_QUEUE = env.str("FLOPWATCH_CELERY_QUEUE", "flopwatch")
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = 3600
CELERY_TIMEZONE = "UTC"
# Every task is idempotent, so a message is acknowledged only once the task has finished: a
# worker killed mid-task leaves the message to be redelivered and run again.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env.int("FLOPWATCH_TASK_SOFT_TIME_LIMIT", 540, minimum=1)
CELERY_TASK_TIME_LIMIT = env.int("FLOPWATCH_TASK_TIME_LIMIT", 600, minimum=1)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = BEAT_SCHEDULE
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# --- Security (production) --------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env.bool("FLOPWATCH_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env.int("FLOPWATCH_HSTS_SECONDS", 31_536_000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("FLOPWATCH_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env.bool("FLOPWATCH_HSTS_PRELOAD", True)
    # Behind a TLS-terminating proxy (nginx, a load balancer) that sets X-Forwarded-Proto.
    if env.bool("FLOPWATCH_BEHIND_PROXY", True):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    # The health check is probed over plain HTTP by load balancers inside the network.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("FLOPWATCH_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- flopwatch product settings ---------------------------------------------------------------
FLOPWATCH_BASE_URL = env.str("FLOPWATCH_BASE_URL", "http://localhost:8000").rstrip("/")
FLOPWATCH_CURRENCY = env.str("FLOPWATCH_CURRENCY", "USD")
FLOPWATCH_BILLING_TIME_ZONE = env.timezone("FLOPWATCH_BILLING_TIME_ZONE", "UTC")
FLOPWATCH_DISPLAY_TIME_ZONE = env.timezone("FLOPWATCH_DISPLAY_TIME_ZONE", "UTC")
# Expected seconds between two samples of a GPU when the agent does not say.
FLOPWATCH_DEFAULT_INTERVAL_S = env.int("FLOPWATCH_DEFAULT_INTERVAL_S", 10, minimum=1)
FLOPWATCH_INGEST_MAX_BODY_BYTES = env.int("FLOPWATCH_INGEST_MAX_BODY_BYTES", 8 * 1024 * 1024)
FLOPWATCH_INGEST_MAX_SAMPLES = env.int("FLOPWATCH_INGEST_MAX_SAMPLES", 10_000, minimum=1)
FLOPWATCH_INGEST_MAX_PAST_S = env.int("FLOPWATCH_INGEST_MAX_PAST_S", 7 * 86_400, minimum=0)
FLOPWATCH_INGEST_MAX_FUTURE_S = env.int("FLOPWATCH_INGEST_MAX_FUTURE_S", 300, minimum=0)
FLOPWATCH_UNASSIGNED_TEAM = env.str("FLOPWATCH_UNASSIGNED_TEAM", "unassigned")
# An allocation whose job stops appearing in samples is closed after this many seconds.
FLOPWATCH_ALLOCATION_GRACE_S = env.int("FLOPWATCH_ALLOCATION_GRACE_S", 300, minimum=0)
FLOPWATCH_RAW_RETENTION_DAYS = env.int("FLOPWATCH_RAW_RETENTION_DAYS", 14, minimum=1)
FLOPWATCH_ROLLUP_5M_RETENTION_DAYS = env.int("FLOPWATCH_ROLLUP_5M_RETENTION_DAYS", 180, minimum=1)
FLOPWATCH_HOURLY_RETENTION_DAYS = env.int("FLOPWATCH_HOURLY_RETENTION_DAYS", 400, minimum=1)
# Rollups: activity below this counts as idle; pending buckets recomputed per transaction.
FLOPWATCH_IDLE_ACTIVITY = env.float("FLOPWATCH_IDLE_ACTIVITY", 0.01, minimum=0.0)
FLOPWATCH_ROLLUP_CHUNK = env.int("FLOPWATCH_ROLLUP_CHUNK", 500_000, minimum=1)
# 5-minute rows of samples on their node's interval grid without a sort (see rollups.py):
# "auto" for large dense work (a backlog, an import), "always" or "never" (tests, debugging).
FLOPWATCH_ROLLUP_GRID_PATH = env.choice(
    "FLOPWATCH_ROLLUP_GRID_PATH", "auto", choices=("auto", "always", "never")
)
# Parallel workers PostgreSQL may give the rollup's large aggregation (unset: the server's
# max_parallel_workers_per_gather). On a database host with few cores, cores - 1 is fastest:
# the leader works too, and on 2 cores the default 2 workers take 5.6 s where 1 takes 4.7 s.
FLOPWATCH_ROLLUP_PARALLEL_WORKERS = env.optional_int(
    "FLOPWATCH_ROLLUP_PARALLEL_WORKERS", minimum=0, maximum=64
)
# A large rollup (a backlog, an import: at least SPLIT_MIN_BUCKETS pending buckets spread over
# several hours) is split by time over this many database connections working at once, each
# part without parallel workers; about the database host's cores is fastest.
FLOPWATCH_ROLLUP_CONNECTIONS = env.int("FLOPWATCH_ROLLUP_CONNECTIONS", 2, minimum=1)
FLOPWATCH_ROLLUP_SPLIT_MIN_BUCKETS = env.int(
    "FLOPWATCH_ROLLUP_SPLIT_MIN_BUCKETS", 20_000, minimum=2
)
# Spread unallocated capacity over teams in proportion to their cost (else a platform row).
FLOPWATCH_SPREAD_UNALLOCATED = env.bool("FLOPWATCH_SPREAD_UNALLOCATED", False)
FLOPWATCH_DIGEST_PERIOD = env.choice(
    "FLOPWATCH_DIGEST_PERIOD", "daily", choices=("hourly", "daily")
)
FLOPWATCH_LINK_MAX_AGE_S = env.int("FLOPWATCH_LINK_MAX_AGE_S", 7 * 86_400, minimum=60)
# Waste detection waits this long for a silent GPU's data before evaluating its allocation
# without it; owners are reminded of an unacknowledged finding every FLOPWATCH_REMINDER_PERIOD_S;
# a failed notification is retried after FLOPWATCH_NOTIFY_BACKOFF_S x 2^(attempt-1).
FLOPWATCH_WASTE_LATE_WAIT_S = env.int("FLOPWATCH_WASTE_LATE_WAIT_S", 3600, minimum=0)
FLOPWATCH_REMINDER_PERIOD_S = env.int("FLOPWATCH_REMINDER_PERIOD_S", 86_400, minimum=60)
FLOPWATCH_NOTIFY_BACKOFF_S = env.int("FLOPWATCH_NOTIFY_BACKOFF_S", 60, minimum=1)
# Import from Prometheus (dcgm-exporter): the periodic import runs every INTERVAL_S and re-reads
# the last OVERLAP_S (scrapes that arrived late); one run imports at most CATCHUP_S of history
# (the first run starts that far back; a longer backlog is caught up over several runs).
# Requests time out after TIMEOUT_S and are retried RETRIES times.
FLOPWATCH_PROMETHEUS_INTERVAL_S = BEAT_SCHEDULE["prometheus-import"]["schedule"]
FLOPWATCH_PROMETHEUS_OVERLAP_S = env.int("FLOPWATCH_PROMETHEUS_OVERLAP_S", 600, minimum=0)
FLOPWATCH_PROMETHEUS_CATCHUP_S = env.int("FLOPWATCH_PROMETHEUS_CATCHUP_S", 6 * 3600, minimum=60)
FLOPWATCH_PROMETHEUS_TIMEOUT_S = env.float("FLOPWATCH_PROMETHEUS_TIMEOUT_S", 30.0, minimum=0.1)
FLOPWATCH_PROMETHEUS_RETRIES = env.int("FLOPWATCH_PROMETHEUS_RETRIES", 2, minimum=0)
