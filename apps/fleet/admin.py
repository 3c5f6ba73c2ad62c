from django import forms
from django.contrib import admin, messages
from django.db.models import Count

from apps.fleet.models import Cluster, Gpu, Node, ServiceToken
from apps.fleet.services import (
    node_token_issue,
    node_token_revoke,
    service_token_create,
    service_token_revoke,
)
from apps.telemetry.prometheus import LABEL_NAME


class ClusterForm(forms.ModelForm):
    """Prometheus secrets are write-only: never sent to the browser, kept when left blank."""

    prometheus_url = forms.URLField(
        label="Prometheus URL",
        required=False,
        assume_scheme="http",
        help_text=Cluster._meta.get_field("prometheus_url").help_text,
    )
    prometheus_password = forms.CharField(
        label="Basic auth password",
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Leave blank to keep the stored one.",
    )
    prometheus_bearer_token = forms.CharField(
        label="Bearer token",
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Leave blank to keep the stored one.",
    )
    clear_prometheus_secrets = forms.BooleanField(
        label="Clear the stored password and token", required=False
    )

    class Meta:
        model = Cluster
        exclude: list[str] = []  # every field; the fieldsets below lay them out

    def clean(self):
        data = super().clean()
        for name in ("prometheus_password", "prometheus_bearer_token"):
            if data.get("clear_prometheus_secrets"):
                data[name] = ""
            elif not data.get(name) and self.instance.pk:
                data[name] = getattr(self.instance, name)
        if data.get("prometheus_username") and data.get("prometheus_bearer_token"):
            raise forms.ValidationError("Give basic auth or a bearer token, not both.")
        label = data.get("project_label") or ""
        if label and not LABEL_NAME.match(label):
            self.add_error("project_label", "Not a Prometheus label name.")
        mapping = data.get("namespace_projects")
        if mapping is not None and (
            not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values())
        ):
            self.add_error("namespace_projects", 'A JSON object: {"namespace": "project-slug"}.')
        selector = data.get("prometheus_selector") or ""
        if "{" in selector or "}" in selector:
            self.add_error("prometheus_selector", 'Label matchers without braces: job="dcgm".')
        return data


@admin.register(Cluster)
class ClusterAdmin(admin.ModelAdmin):
    form = ClusterForm
    list_display = [
        "slug",
        "name",
        "node_count",
        "prometheus_url",
        "prometheus_watermark",
        "prometheus_status",
        "created_at",
    ]
    search_fields = ["slug", "name"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = ["prometheus_last_run_at", "prometheus_last_error", "created_at"]
    fieldsets = [
        (None, {"fields": ["slug", "name", "description", "created_at"]}),
        (
            "Import from Prometheus (dcgm-exporter)",
            {
                "fields": [
                    "prometheus_url",
                    "prometheus_username",
                    "prometheus_password",
                    "prometheus_bearer_token",
                    "clear_prometheus_secrets",
                    "prometheus_verify_tls",
                    "prometheus_selector",
                    "prometheus_step_s",
                    "namespace_projects",
                    "project_label",
                    "prometheus_watermark",
                    "prometheus_last_run_at",
                    "prometheus_last_error",
                ]
            },
        ),
    ]

    @admin.display(description="last import")
    def prometheus_status(self, obj):
        if not obj.prometheus_url:
            return "-"
        if obj.prometheus_last_error:
            return f"error: {obj.prometheus_last_error[:80]}"
        return "ok" if obj.prometheus_last_run_at else "not run yet"

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_node_count=Count("nodes"))

    @admin.display(ordering="_node_count", description="nodes")
    def node_count(self, obj):
        return obj._node_count


class GpuInline(admin.TabularInline):
    model = Gpu
    fk_name = "node"
    extra = 0
    fields = ["index", "uuid", "model_name", "mem_total_mib", "mig_profile", "last_seen_at"]
    readonly_fields = ["last_seen_at"]
    show_change_link = True


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = [
        "hostname",
        "cluster",
        "is_active",
        "last_seen_at",
        "agent_source",
        "agent_version",
        "sample_interval_s",
        "token_prefix",
    ]
    list_filter = ["cluster", "is_active", "agent_source", "agent_version"]
    search_fields = ["hostname"]
    readonly_fields = ["token_prefix", "token_created_at", "last_seen_at", "created_at"]
    list_select_related = ["cluster"]
    inlines = [GpuInline]
    actions = ["issue_token", "revoke_token"]

    @admin.action(description="Issue a new token (shown once; revokes the old one)")
    def issue_token(self, request, queryset):
        for node in queryset:
            token = node_token_issue(node=node)
            self.message_user(
                request,
                f"Token for {node.hostname} (copy it now, it is not shown again): {token}",
                messages.WARNING,
            )

    @admin.action(description="Revoke token")
    def revoke_token(self, request, queryset):
        for node in queryset:
            node_token_revoke(node=node)
        self.message_user(request, f"Revoked {queryset.count()} node token(s).")


@admin.register(Gpu)
class GpuAdmin(admin.ModelAdmin):
    list_display = [
        "uuid",
        "node",
        "index",
        "model_name",
        "mem_total_mib",
        "mig_profile",
        "last_seen_at",
    ]
    list_filter = ["model_name", "node__cluster"]
    search_fields = ["uuid", "node__hostname", "model_name"]
    list_select_related = ["node"]
    raw_id_fields = ["node", "mig_parent"]


@admin.register(ServiceToken)
class ServiceTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "token_prefix", "created_at", "last_used_at", "revoked_at"]
    search_fields = ["name"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    fields = ["name", "token_prefix", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = ["token_prefix", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        created, token = service_token_create(name=obj.name)
        obj.pk = created.pk
        self.message_user(
            request,
            f"Token for {obj.name} (copy it now, it is not shown again): {token}",
            messages.WARNING,
        )

    @admin.action(description="Revoke")
    def revoke(self, request, queryset):
        for service_token in queryset:
            service_token_revoke(service_token=service_token)
