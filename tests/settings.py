"""Settings for the test suite: the real PostgreSQL and Redis whenever they answer.

.ci/run sets DATABASE_URL, CELERY_BROKER_URL and REQUIRE_SERVICES=1, so in CI a
missing service stops the run with an error instead of skipping tests. Locally,
with neither variable set, the suite looks for the services on their standard
ports and otherwise falls back to SQLite and the filesystem broker, skipping only
the tests marked `services` (the header of the pytest run says which it used).
"""

import os
import tempfile

from django.core.exceptions import ImproperlyConfigured

from tests.seaweedfs import answers  # a port that takes a connection

if "DATABASE_URL" not in os.environ and answers("127.0.0.1", 5432):
    os.environ["DATABASE_URL"] = "postgres://postgres@127.0.0.1:5432/postgres"
if "CELERY_BROKER_URL" not in os.environ and answers("127.0.0.1", 6379):
    # A database number of its own, so tests never meet a demo's messages.
    os.environ["CELERY_BROKER_URL"] = "redis://127.0.0.1:6379/15"

# Torch on one thread, in the tests and the workers they start (which inherit it): the tiny
# models run several times faster so on CI's two cores, which the test, its workers and the
# live server share; with a thread per core, OpenMP's threads wait on each other.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Nothing a test does touches the developer's var/ (database, media, secret key).
os.environ["VAR_DIR"] = tempfile.mkdtemp(prefix="readerstudy-tests-")

from config.settings import *  # noqa: E402,F403
from config.settings import CELERY_BROKER_URL, DATABASES  # noqa: E402

TEST_SERVICES = DATABASES["default"]["ENGINE"].endswith("postgresql") and (
    CELERY_BROKER_URL.startswith("redis://")
)
if os.environ.get("REQUIRE_SERVICES") == "1" and not TEST_SERVICES:
    raise ImproperlyConfigured(
        "REQUIRE_SERVICES=1 but the tests are not set up on PostgreSQL and Redis "
        f"(database engine {DATABASES['default']['ENGINE']}, broker {CELERY_BROKER_URL.split(':')[0]}). "
        "Start them, or set DATABASE_URL and CELERY_BROKER_URL."
    )

# Where the suite keeps files: the SeaweedFS S3 server (tests/seaweedfs.py, started by the
# fixtures if .ci/run did not), or folders with TEST_STORAGE=filesystem.
TEST_STORAGE = os.environ.get("TEST_STORAGE", "s3")
if TEST_STORAGE not in ("s3", "filesystem"):
    raise ImproperlyConfigured(f"TEST_STORAGE={TEST_STORAGE!r}: use s3 or filesystem")

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
