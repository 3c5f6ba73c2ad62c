"""``manage.py create_node_token NODE --cluster C``: issue (or ``--revoke``) a node's token."""

from django.core.management.base import BaseCommand, CommandError

from apps.fleet.models import Node
from apps.fleet.services import node_get_or_create, node_token_issue, node_token_revoke


class Command(BaseCommand):
    help = (
        "Issue a token for a node agent (created with its cluster if unknown) and print it "
        "once; it is stored hashed. Issuing again replaces the old token. --revoke removes it."
    )

    def add_arguments(self, parser):
        parser.add_argument("node", help="the node's hostname, as the agent reports it")
        parser.add_argument("--cluster", help="cluster slug (required to create a new node)")
        parser.add_argument("--revoke", action="store_true", help="revoke the node's token")

    def handle(self, *args, node: str, cluster: str | None, revoke: bool, **options):
        if revoke:
            found = Node.objects.filter(hostname=node).first()
            if found is None:
                raise CommandError(f"no node {node!r}")
            node_token_revoke(node=found)
            self.stdout.write(f"revoked the token of {node}")
            return
        existing = Node.objects.filter(hostname=node).first()
        if existing is None:
            if not cluster:
                raise CommandError(f"node {node!r} is new: say which --cluster it belongs to")
            existing, _ = node_get_or_create(hostname=node, cluster_slug=cluster)
        elif cluster and existing.cluster.slug != cluster:
            raise CommandError(
                f"node {node!r} belongs to cluster {existing.cluster.slug!r}, not {cluster!r}"
            )
        token = node_token_issue(node=existing)
        self.stderr.write(f"token for {node} (shown once; store it in the agent's config):")
        self.stdout.write(token)
