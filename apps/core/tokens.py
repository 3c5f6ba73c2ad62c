"""Bearer tokens: generated once, shown once, stored as a SHA-256 digest.

A token has 256 bits of randomness, so a fast hash is enough (a slow password hash protects
guessable secrets, and would cost a few milliseconds on every agent push).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def token_generate(*, prefix: str) -> str:
    """A new random token such as ``fwn_3J9x...``; the prefix says what kind it is."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def token_hash(*, token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(*, token: str, digest: str) -> bool:
    return hmac.compare_digest(token_hash(token=token), digest)


def bearer_token(*, authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
