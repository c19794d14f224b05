"""Django settings, read from environment variables (see the README's table).

The defaults are safe for a laptop: SQLite and a filesystem Celery broker under var/,
DEBUG off. DJANGO_ENV=production turns on every deployment check and requires the
secrets and hosts to be given.
"""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured

from .env import env_bool, env_int, env_list, env_str, local_secret_key
from .storage import FILESYSTEM, object_storage_options, storage_from_url

# Models are always loaded from local folders: never reach for the Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var")))

DJANGO_ENV = env_str("DJANGO_ENV", "development")
if DJANGO_ENV not in {"development", "production"}:
    raise ImproperlyConfigured(f"DJANGO_ENV={DJANGO_ENV!r}: use 'development' or 'production'.")
PRODUCTION = DJANGO_ENV == "production"

DEBUG = env_bool("DEBUG", False)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DEBUG must be off when DJANGO_ENV=production.")

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("SECRET_KEY must be set when DJANGO_ENV=production.")
    SECRET_KEY = local_secret_key(VAR_DIR / "secret_key")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]"])
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must name the site's host(s) when DJANGO_ENV=production.")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "studies",
    "generation",
    # Login lock-out after repeated wrong passwords (its tables, and admin pages to unlock).
    "axes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # A database (or cache) outage answers 503 with Retry-After, logged once a minute.
    "config.outage.DatabaseOutageMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Every page needs a login unless its view is marked @login_not_required.
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "config.csp.CSPMiddleware",  # django-csp's, with the policy built once
    # Last, as axes requires: turns a locked-out login into the lock-out page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        # Off by default in web processes: a check is a round trip before each request's first
        # query. A connection the database dropped fails one request (503, which the page sends
        # again) and is replaced at the next. Celery workers always check (config/celery.py).
        conn_health_checks=env_bool("DATABASE_CONN_HEALTH_CHECKS", False),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server and the worker write to one file: wait for its lock instead
    # of failing, and take write locks up front so transactions do not deadlock.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
    DATABASES["default"]["CONN_MAX_AGE"] = 0
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Axes first: it refuses a locked-out login before any password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    # Django's ModelBackend, the user of each request kept in the shared cache (config/auth.py).
    "config.auth.CachedUserBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# Every file the app keeps (uploads, images, models, checkpoints) goes through the
# storage API (config/storage.py): the folder MEDIA_ROOT by default, S3-compatible
# object storage with STORAGE_URL=s3://KEY:SECRET@host:port/bucket/prefix or the
# AWS_* variables. There is no MEDIA_URL on purpose: readers get images only through
# views that check they are assigned to them, never from the store itself.
STORAGE_URL = env_str("STORAGE_URL", "")
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(VAR_DIR / "media")))
if STORAGE_URL.startswith("file://"):
    MEDIA_ROOT = Path(storage_from_url(STORAGE_URL)["OPTIONS"]["location"])


def default_storage_entry() -> dict:
    if STORAGE_URL and not STORAGE_URL.startswith("file://"):
        return storage_from_url(STORAGE_URL)
    if env_str("AWS_STORAGE_BUCKET_NAME"):
        # The usual django-storages variables; keys may also come from boto3's own chain
        # (AWS_ACCESS_KEY_ID in the environment, an instance role).
        options = {
            "bucket_name": env_str("AWS_STORAGE_BUCKET_NAME"),
            "location": env_str("AWS_LOCATION"),
            "region_name": env_str("AWS_S3_REGION_NAME") or None,
            "endpoint_url": env_str("AWS_S3_ENDPOINT_URL") or None,
            "addressing_style": env_str("AWS_S3_ADDRESSING_STYLE") or None,
        }
        return object_storage_options({k: v for k, v in options.items() if v is not None})
    return {"BACKEND": FILESYSTEM}  # MEDIA_ROOT, read when used (tests change it)


STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "static")))
# Outside production, WhiteNoise serves straight from static/ (no collectstatic);
# in production nginx serves STATIC_ROOT, with WhiteNoise behind it as a fallback.
WHITENOISE_USE_FINDERS = not PRODUCTION
WHITENOISE_AUTOREFRESH = DEBUG
if not PRODUCTION:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": default_storage_entry(),
    "staticfiles": {
        "BACKEND": "config.staticfiles.StaticStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}


# --- Celery (config/celery.py reads every CELERY_* name below) ---------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_DIR = VAR_DIR / "broker"
# The longest a task may run: generation chunks are one batch, so this is generous.
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 30 * 60)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", CELERY_TASK_SOFT_TIME_LIMIT + 5 * 60)
# Late acks redeliver a task whose worker died, after this long; it must exceed the
# longest task or a healthy long task would be delivered twice.
CELERY_BROKER_VISIBILITY_TIMEOUT = env_int(
    "CELERY_BROKER_VISIBILITY_TIMEOUT", CELERY_TASK_TIME_LIMIT + 15 * 60
)
if CELERY_BROKER_VISIBILITY_TIMEOUT <= CELERY_TASK_TIME_LIMIT:
    raise ImproperlyConfigured(
        "CELERY_BROKER_VISIBILITY_TIMEOUT must be longer than CELERY_TASK_TIME_LIMIT, "
        "or running tasks are delivered a second time."
    )
CELERY_TASK_ALWAYS_EAGER = False
# How often Celery beat runs the periodic work (stuck jobs, preparing studies).
CELERY_BEAT_SECONDS = env_int("CELERY_BEAT_SECONDS", 60)
# A queued or running generation job that no worker has touched for this long, while no task
# waits in the `gpu` queue, has lost its chunks (a broker that lost its messages, a worker that
# died with its chunk): beat's sweep sends its missing chunks again. Workers report at least
# every 10 s while they work on a job (loading a pipeline too), so this need only be longer
# than one denoising step, or the decoding and writing of a batch.
GENERATION_SILENCE_SECONDS = env_int("GENERATION_SILENCE_SECONDS", 5 * 60)
if GENERATION_SILENCE_SECONDS < 4:
    # Workers report every quarter of it: shorter would be an UPDATE every step.
    raise ImproperlyConfigured("GENERATION_SILENCE_SECONDS must be at least 4.")

# --- Cache and sessions -----------------------------------------------------------
# CACHE_URL (redis://host:6379/1): one cache shared by every web server, and sessions read
# from it (cached_db: written through to the database, so a cache restart logs nobody out).
# A logout deletes the session from both, on every server at once; the user of each request
# is cached there too and dropped whenever it is saved, so a deactivated reader is refused at
# the next request (config/auth.py). Without CACHE_URL: a cache in each process's memory, and
# sessions from the database (a per-process cache would not see a logout made through another
# process).
CACHE_URL = env_str("CACHE_URL", "")
if CACHE_URL:
    if CACHE_URL.split(":", 1)[0] not in {"redis", "rediss", "unix"}:
        raise ImproperlyConfigured(f"CACHE_URL={CACHE_URL!r}: give a Redis URL, e.g. redis://host:6379/1.")
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": CACHE_URL,
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
    }
    SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    SESSION_ENGINE = "django.contrib.sessions.backends.db"

# --- Security -----------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 12 * 60 * 60)
# A reader's reading session ends after this long without an answer; the next one begins then.
READING_SESSION_GAP_MINUTES = env_int("READING_SESSION_GAP_MINUTES", 30)
CSRF_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# Content-Security-Policy on every page, the admin's included: scripts, styles and
# everything else from this site only; images also as blob: (the labelling page shows
# each image from a blob) and data: (the empty favicon). Inline style *attributes* are
# allowed (style-src-attr): the plots are matplotlib's SVG, styled by attribute on every
# path; an attribute runs no script and fetches nothing that img-src would not allow.
# <style> elements and inline scripts stay blocked.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "style-src-attr": [UNSAFE_INLINE],
        "img-src": [SELF, "blob:", "data:"],
        "object-src": [NONE],
        "base-uri": [SELF],
        "frame-ancestors": [NONE],
        "form-action": [SELF],
    },
}

# Login lock-out (django-axes, in the database): after AXES_FAILURE_LIMIT wrong passwords
# for one username from one address, that pair is refused for AXES_COOLOFF_MINUTES, or
# until a researcher deletes the lock-out under Admin > Axes > Access attempts
# (or `manage.py axes_reset_username NAME`).
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 10)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("AXES_COOLOFF_MINUTES", 60))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True  # a reader who mistypes now and then is never locked out in the end
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_HTTP_RESPONSE_CODE = 429
if PRODUCTION:
    # Behind nginx every request comes from nginx: the address is the one nginx saw
    # (`proxy_set_header X-Real-IP $remote_addr;`, see the README).
    AXES_CLIENT_IP_CALLABLE = "config.client_ip.forwarded_client_ip"
# The addresses of the reverse proxies whose X-Real-IP is believed (nginx on the same host by default).
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES", ["127.0.0.1", "::1"])

if PRODUCTION:
    # TLS ends at nginx, which tells Django so with this header.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 365 * 24 * 60 * 60)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "axes": {"level": "WARNING"},  # failures and lock-outs; not a line for every good login
    },
}

# --- Images -------------------------------------------------------------------
# Side of the square PNG every reader image is normalised to (a study may choose another).
READER_IMAGE_SIZE = env_int("READER_IMAGE_SIZE", 512)
# Keep each imported file as it came, for researchers (never reachable by readers).
KEEP_ORIGINALS = env_bool("KEEP_ORIGINALS", True)
# Set to an nginx `internal` location (e.g. "/protected-media/") that maps onto
# MEDIA_ROOT to let nginx send reader images; empty: Django sends them itself.
READER_IMAGE_ACCEL_PREFIX = env_str("READER_IMAGE_ACCEL_PREFIX", "")
DATA_UPLOAD_MAX_NUMBER_FILES = env_int("DATA_UPLOAD_MAX_NUMBER_FILES", 1000)

# --- Generation -----------------------------------------------------------------
# Models live in the storage (models/<sha256 of the manifest>/, generation/store.py); each
# worker keeps local copies of those it loads here, checked by hash, the least recently
# used removed beyond MODEL_CACHE_BYTES (generation/model_cache.py). Local to each host.
MODEL_CACHE_DIR = Path(env_str("MODEL_CACHE_DIR", str(VAR_DIR / "model-cache")))

# Machine measures (generation/features.py): each extractor's weights from a file on this
# host, never downloaded. A missing file skips that extractor's measures, saying so.
METRICS_WEIGHTS_DIR = Path(env_str("METRICS_WEIGHTS_DIR", str(VAR_DIR / "metrics-weights")))
METRICS_XRV_WEIGHTS = env_str("METRICS_XRV_WEIGHTS", str(METRICS_WEIGHTS_DIR / "densenet121-res224-all.pt"))
METRICS_INCEPTION_WEIGHTS = env_str(
    "METRICS_INCEPTION_WEIGHTS", str(METRICS_WEIGHTS_DIR / "pt_inception-2015-12-05-6726825d.pth")
)
MODEL_CACHE_BYTES = env_int("MODEL_CACHE_BYTES", 100 * 2**30)
# Pipelines each worker process keeps loaded (least recently used goes first).
PIPELINE_CACHE_SIZE = env_int("PIPELINE_CACHE_SIZE", 2)
# Checkpoints and previews of training jobs are in the storage (training/<job id>/), so a
# job resumes on whichever host takes it up.
# A training task stops at a checkpoint after this long and queues its continuation, so a job
# may run longer than any one task may (0: after every step, for tests).
TRAINING_SLICE_SECONDS = env_int("TRAINING_SLICE_SECONDS", CELERY_TASK_SOFT_TIME_LIMIT * 4 // 5)
# A running training job that no worker has reported on for this long is resumed by the sweep
# (its worker died with it); longer than any one task may run.
TRAINING_SILENCE_SECONDS = env_int("TRAINING_SILENCE_SECONDS", CELERY_TASK_TIME_LIMIT + 60)

# --- Reader accounts and email ------------------------------------------------------
# A new reader gets a one-time link to set a password (Django's password-reset
# token: it stops working once used, or after this many seconds).
PASSWORD_RESET_TIMEOUT = env_int("READER_LINK_SECONDS", 7 * 24 * 60 * 60)
# With EMAIL_HOST set, the links are also emailed to readers who have an address.
EMAIL_HOST = env_str("EMAIL_HOST", "")
EMAIL_PORT = env_int("EMAIL_PORT", 587)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "reader-study@localhost")
READER_LINKS_BY_EMAIL = bool(EMAIL_HOST)
