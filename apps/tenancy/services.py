"""Writes to tenancy: API tokens. (Allocations are opened and closed by the ingest services.)"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser

from apps.core.tokens import token_generate, token_hash
from apps.tenancy.models import ApiToken

API_TOKEN_PREFIX = "fwu"


def api_token_create(*, user: AbstractBaseUser, name: str) -> tuple[ApiToken, str]:
    """A personal API token; the plain token is returned once and stored hashed."""
    token = token_generate(prefix=API_TOKEN_PREFIX)
    api_token = ApiToken.objects.create(
        user=user, name=name, token_hash=token_hash(token=token), token_prefix=token[:10]
    )
    return api_token, token
