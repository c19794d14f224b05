"""The user of each request, kept in the shared cache beside the session.

Every request loads its user: with sessions in Redis (CACHE_URL), the user's row was the
one database query that every labelling request made before its own work, and compiling
it through the ORM cost more CPU than the image request's own lookup (docs/benchmarks.md,
"Labelling at scale"). With a shared cache, the user comes from it for up to
USER_CACHE_SECONDS and is dropped from it whenever the user is saved or deleted
(post_save, post_delete: the admin, `changepassword`, a login's last_login), on every web
host at once, so a deactivation or a new password (which ends the user's other sessions)
takes effect at the next request. Code that changes users without saving them
(`QuerySet.update`) must call `user_cache_drop`. Without a shared cache (each process has
its own memory, and one process could not drop another's copy) nothing is cached.

The cached user is what the session's own check needs (its password hash, compared through
Django's session hash) and nothing that Redis does not already hold the equivalent of: the
sessions themselves are the keys to these accounts.
"""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.cache import cache
from django.db import transaction
from django.db.models.signals import post_delete, post_save

USER_CACHE_SECONDS = 300


def user_cache_key(pk) -> str:
    return f"auth-user:{pk}"


def user_cache_drop(pk) -> None:
    if settings.CACHE_URL:
        cache.delete(user_cache_key(pk))


class CachedUserBackend(ModelBackend):
    """Django's ModelBackend (the same logins, permissions and refusals), its get_user cached."""

    def get_user(self, user_id):
        if not settings.CACHE_URL:
            return super().get_user(user_id)
        key = user_cache_key(user_id)
        user = cache.get(key)
        if user is None:
            user = super().get_user(user_id)  # None for an unknown or inactive user: not cached
            if user is not None:
                cache.set(key, user, USER_CACHE_SECONDS)
        return user


def _dropped(sender, instance, **kwargs):
    pk = instance.pk
    user_cache_drop(pk)
    # And again once the change is committed: a request between the save and the commit (the
    # admin saves inside a transaction) may have read the old row and cached it meanwhile.
    transaction.on_commit(lambda: user_cache_drop(pk))


def connect_signals() -> None:
    """Called from an AppConfig.ready(), so that every process drops what it changes."""
    user = get_user_model()
    post_save.connect(_dropped, sender=user, dispatch_uid="config.auth.saved")
    post_delete.connect(_dropped, sender=user, dispatch_uid="config.auth.deleted")
