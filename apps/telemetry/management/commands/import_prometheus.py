"""``manage.py import_prometheus --url URL --start ISO --end ISO [--step 30s]``: backfill
dcgm-exporter series from an existing Prometheus (DESIGN.md)."""

import os
from dataclasses import replace
from datetime import UTC, datetime

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from apps.fleet.models import Cluster
from apps.telemetry.prometheus import (
    DEFAULT_CHUNK_POINTS,
    MAX_POINTS,
    PrometheusImportError,
    PrometheusSource,
    duration_parse,
    prometheus_points_count,
    prometheus_range_import,
)


def _moment(name: str, text: str) -> datetime:
    """ISO-8601 (``Z`` or an offset; naive means UTC) or epoch seconds."""
    text = text.strip()
    try:
        return datetime.fromtimestamp(float(text), tz=UTC)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(
            f"--{name}: {text!r} is neither ISO-8601 (2026-10-01T00:00Z) nor epoch seconds"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _namespace_map(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        for pair in item.split(","):
            if not pair.strip():
                continue
            namespace, sep, project = pair.partition("=")
            if not sep or not namespace.strip() or not project.strip():
                raise CommandError(f"--namespace-map: expected NAMESPACE=PROJECT, got {pair!r}")
            out[namespace.strip()] = project.strip()
    return out


class Command(BaseCommand):
    help = (
        "Import GPU series of NVIDIA dcgm-exporter from a Prometheus, for any time range, into "
        "flopwatch's raw samples (same validation, storage and rollups as agent data). "
        "Re-running it changes nothing. With --cluster naming a cluster whose Prometheus is "
        "configured in the admin, its URL, auth, selector and project mapping are the defaults."
    )

    def add_arguments(self, parser):
        parser.add_argument("--url", help="Prometheus base URL, e.g. http://prometheus:9090")
        parser.add_argument("--start", required=True, help="ISO-8601 or epoch seconds")
        parser.add_argument("--end", required=True, help="ISO-8601 or epoch seconds")
        parser.add_argument("--step", default=None, help="sample spacing, e.g. 30s (default 30s)")
        parser.add_argument(
            "--cluster", default=None, help="cluster of new nodes (default: prometheus)"
        )
        parser.add_argument(
            "--namespace-map",
            action="append",
            default=[],
            metavar="NS=PROJECT[,NS=PROJECT]",
            help="Kubernetes namespace -> project slug (repeatable)",
        )
        parser.add_argument("--project-label", help="series label whose value is the project")
        parser.add_argument("--selector", help='label matchers for every query, e.g. job="dcgm"')
        parser.add_argument("--username", help="basic auth user")
        parser.add_argument(
            "--password-env",
            metavar="VAR",
            help="environment variable holding the basic auth password",
        )
        parser.add_argument(
            "--token-env", metavar="VAR", help="environment variable holding a bearer token"
        )
        parser.add_argument("--insecure", action="store_true", help="skip TLS verification")
        parser.add_argument("--timeout", type=float, help="seconds per request")
        parser.add_argument("--chunk-points", type=int, default=DEFAULT_CHUNK_POINTS)
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, **o):
        start, end = _moment("start", o["start"]), _moment("end", o["end"])
        if end <= start:
            raise CommandError("--end must be after --start")
        now = datetime.now(tz=UTC)
        if start > now:
            raise CommandError("--start is in the future")
        end = min(end, now)
        if not 1 <= o["chunk_points"] <= MAX_POINTS:
            raise CommandError(f"--chunk-points must be 1..{MAX_POINTS} (Prometheus' limit)")
        if o["timeout"] is not None and o["timeout"] <= 0:
            raise CommandError("--timeout must be positive")

        cluster = Cluster.objects.filter(slug=o["cluster"]).first() if o["cluster"] else None
        source = (
            PrometheusSource.for_cluster(cluster)
            if cluster and cluster.prometheus_url
            else PrometheusSource(url="", cluster_slug=o["cluster"] or "prometheus")
        )
        if cluster and not cluster.prometheus_url:
            source = replace(
                source,
                namespace_projects=cluster.namespace_projects or {},
                project_label=cluster.project_label,
            )
        changes: dict = {}
        if o["url"]:
            changes["url"] = o["url"]
        elif not source.url:
            raise CommandError("--url is required (or a --cluster with a Prometheus URL)")
        if o["namespace_map"]:
            changes["namespace_projects"] = {
                **source.namespace_projects,
                **_namespace_map(o["namespace_map"]),
            }
        for option, attr in (("project_label", "project_label"), ("selector", "selector")):
            if o[option] is not None:
                changes[attr] = o[option]
        if o["username"]:
            changes.update(username=o["username"], bearer_token="")
            changes["password"] = self._secret(o["password_env"], "--password-env") or ""
        if o["token_env"]:
            changes.update(bearer_token=self._secret(o["token_env"], "--token-env"), username="")
        if o["insecure"]:
            changes["verify_tls"] = False
        if o["timeout"] is not None:
            changes["timeout_s"] = o["timeout"]
        source = replace(source, **changes)
        try:
            step = duration_parse(
                o["step"] or (f"{cluster.prometheus_step_s}s" if cluster else "30s")
            )
        except PrometheusImportError as exc:
            raise CommandError(f"--step: {exc}") from None

        total = prometheus_points_count(start=start, end=end, step_s=step)
        bar = tqdm(total=total, unit="steps", disable=o["no_progress"], file=self.stderr._out)
        try:
            result = prometheus_range_import(
                source=source,
                start=start,
                end=end,
                step_s=step,
                progress=bar.update,
                chunk_points=o["chunk_points"],
            )
        except PrometheusImportError as exc:
            raise CommandError(str(exc)) from None
        finally:
            bar.close()
        for error in result.errors[:20]:
            self.stderr.write(error)
        self.stdout.write(
            f"{result.samples} samples from {source.url}: {result.accepted} stored, "
            f"{result.duplicates} duplicates, {result.rejected} rejected, "
            f"{result.invalid_values} invalid values dropped; {len(result.gpus)} GPUs on "
            f"{len(result.nodes)} nodes ({result.queries} queries in {result.chunks} chunks)"
        )

    def _secret(self, var: str | None, option: str) -> str:
        if not var:
            return ""
        value = os.environ.get(var)
        if not value:
            raise CommandError(f"{option}: environment variable {var} is not set")
        return value
