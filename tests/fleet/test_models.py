import pytest
from django.db import IntegrityError, transaction

from apps.core.tokens import bearer_token, token_matches
from apps.fleet.models import Cluster, Gpu, Node, ServiceToken
from apps.fleet.services import (
    node_get_or_create,
    node_token_issue,
    node_token_revoke,
    service_token_create,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def node():
    cluster = Cluster.objects.create(slug="c1", name="C1")
    return Node.objects.create(cluster=cluster, hostname="gpu-001")


def test_gpu_uuid_is_unique_across_the_fleet(node):
    other = Node.objects.create(cluster=node.cluster, hostname="gpu-002")
    Gpu.objects.create(uuid="GPU-1", node=node, index=0, model_name="NVIDIA H100")
    with pytest.raises(IntegrityError), transaction.atomic():
        Gpu.objects.create(uuid="GPU-1", node=other, index=0, model_name="NVIDIA H100")


def test_hostname_is_unique(node):
    with pytest.raises(IntegrityError), transaction.atomic():
        Node.objects.create(cluster=node.cluster, hostname="gpu-001")


def test_mig_instance_needs_a_profile(node):
    parent = Gpu.objects.create(uuid="GPU-P", node=node, index=0, model_name="NVIDIA H100")
    with pytest.raises(IntegrityError), transaction.atomic():
        Gpu.objects.create(uuid="MIG-1", node=node, index=0, model_name="x", mig_parent=parent)
    mig = Gpu.objects.create(
        uuid="MIG-2", node=node, index=0, model_name="x", mig_parent=parent, mig_profile="1g.10gb"
    )
    assert mig.is_mig_instance and not parent.is_mig_instance


def test_node_token_is_stored_hashed_and_revocable(node):
    token = node_token_issue(node=node)
    node.refresh_from_db()
    assert token.startswith("fwn_") and token not in node.token_hash
    assert token_matches(token=token, digest=node.token_hash)
    second = node_token_issue(node=node)
    node.refresh_from_db()
    assert not token_matches(token=token, digest=node.token_hash)
    assert token_matches(token=second, digest=node.token_hash)
    node_token_revoke(node=node)
    node.refresh_from_db()
    assert node.token_hash is None and not node.has_token


def test_service_token(db):
    service_token, token = service_token_create(name="slurm-prolog")
    assert ServiceToken.objects.get().token_hash == service_token.token_hash
    assert token_matches(token=token, digest=service_token.token_hash)


def test_node_get_or_create_is_idempotent(db):
    first, created = node_get_or_create(hostname="n1", cluster_slug="east")
    again, created_again = node_get_or_create(hostname="n1", cluster_slug="east")
    assert created and not created_again and first.pk == again.pk


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("", None), ("Basic abc", None), ("Bearer ", None), ("bearer tok", "tok")],
)
def test_bearer_token(header, expected):
    assert bearer_token(authorization=header) == expected
