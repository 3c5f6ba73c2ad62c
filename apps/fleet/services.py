"""Writes to the fleet: tokens for nodes and services."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from apps.core.tokens import token_generate, token_hash
from apps.fleet.models import Cluster, Node, ServiceToken

NODE_TOKEN_PREFIX = "fwn"
SERVICE_TOKEN_PREFIX = "fws"


def node_token_issue(*, node: Node) -> str:
    """Give the node a new token and return it; it is stored hashed and cannot be shown again.

    Issuing a new token revokes the previous one.
    """
    token = token_generate(prefix=NODE_TOKEN_PREFIX)
    node.token_hash = token_hash(token=token)
    node.token_prefix = token[:10]
    node.token_created_at = timezone.now()
    node.save(update_fields=["token_hash", "token_prefix", "token_created_at"])
    return token


def node_token_revoke(*, node: Node) -> None:
    node.token_hash = None
    node.token_prefix = ""
    node.save(update_fields=["token_hash", "token_prefix"])


@transaction.atomic
def node_get_or_create(*, hostname: str, cluster_slug: str) -> tuple[Node, bool]:
    """The node with this hostname, created in the cluster (created too) if unknown."""
    cluster, _ = Cluster.objects.get_or_create(slug=cluster_slug, defaults={"name": cluster_slug})
    return Node.objects.get_or_create(hostname=hostname, defaults={"cluster": cluster})


def service_token_create(*, name: str) -> tuple[ServiceToken, str]:
    token = token_generate(prefix=SERVICE_TOKEN_PREFIX)
    service_token = ServiceToken.objects.create(
        name=name, token_hash=token_hash(token=token), token_prefix=token[:10]
    )
    return service_token, token


def service_token_revoke(*, service_token: ServiceToken) -> None:
    if service_token.revoked_at is None:
        service_token.revoked_at = timezone.now()
        service_token.save(update_fields=["revoked_at"])
