"""Reader accounts for studies: created by researchers, each with a one-time link to set a password."""

import re
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import transaction
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from .models import Study
from .services import study_reader_add

USERNAME = re.compile(r"^[\w.@+-]{1,150}$")


@dataclass(frozen=True)
class NewReader:
    username: str
    email: str
    link: str  # absolute; shown once to the researcher
    emailed: bool


def password_link(user, *, base_url: str) -> str:
    """A link that lets `user` set a password once (Django's reset token: used or expired, it fails)."""
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    token = default_token_generator.make_token(user)
    return base_url.rstrip("/") + reverse("password_reset_confirm", args=[uid, token])


def parse_new_readers(text: str) -> list[tuple[str, str]]:
    """Lines of 'username' or 'username email' (or 'username, email'); every problem named with its line."""
    User = get_user_model()
    wanted, problems, seen = [], [], set()
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.replace(",", " ").split()
        if not parts:
            continue
        if len(parts) > 2:
            problems.append(f"line {number}: expected a username and at most one email address")
            continue
        username, email = parts[0], parts[1] if len(parts) == 2 else ""
        if not USERNAME.match(username):
            problems.append(
                f"line {number}: {username!r} is not a valid username (letters, digits, . @ + - _)"
            )
            continue
        if email:
            try:
                validate_email(email)
            except ValidationError:
                problems.append(f"line {number}: {email!r} is not an email address")
                continue
        if username.lower() in seen:
            problems.append(f"line {number}: {username!r} appears twice")
            continue
        if User.objects.filter(username__iexact=username).exists():
            problems.append(f"line {number}: {username!r} already has an account; choose it from the list")
            continue
        seen.add(username.lower())
        wanted.append((username, email))
    if problems:
        raise ValidationError(problems)
    return wanted


@transaction.atomic
def readers_create(*, study: Study, accounts: list[tuple[str, str]], base_url: str) -> list[NewReader]:
    """Create reader accounts (no usable password yet), add them to the study, make their links.

    Where email is configured, readers with an address get their link by email
    too; the researcher sees every link once, to pass on.
    """
    User = get_user_model()
    made = []
    for username, email in accounts:
        user = User(username=username, email=email)
        user.set_unusable_password()
        user.save()
        study_reader_add(study=study, reader=user)
        link = password_link(user, base_url=base_url)
        emailed = bool(email and settings.READER_LINKS_BY_EMAIL)
        if emailed:
            transaction.on_commit(lambda u=user, a=link: _send_link(u, a, study))
        made.append(NewReader(username=username, email=email, link=link, emailed=emailed))
    return made


def _send_link(user, link: str, study: Study) -> None:
    send_mail(
        subject=f"Reader study: {study.title}",
        message=(
            f"You have been asked to read images for the study \"{study.title}\".\n\n"
            f"Your username is {user.get_username()}. Set your password with this link (it works once):\n"
            f"{link}\n"
        ),
        from_email=None,
        recipient_list=[user.email],
    )
