from django.contrib import admin

from apps.waste.models import (
    Channel,
    DetectionCursor,
    Finding,
    FindingEvent,
    Notification,
    NotificationPreference,
    Policy,
    ProjectDetectionCursor,
)


@admin.register(Policy)
class PolicyAdmin(admin.ModelAdmin):
    list_display = ("__str__", "scope", "idle_minutes", "memory_held_idle_minutes",
                    "low_efficiency_pct", "partial_use_minutes", "oversized_min_gpu_hours",
                    "silent_intervals")  # fmt: skip
    list_filter = ("scope",)
    autocomplete_fields = ()
    fieldsets = (
        ("Scope", {
            "fields": ("scope", "cluster", "team", "project"),
            "description": "Leave cluster, team and project empty for the global default. "
            "Empty thresholds inherit: project > team > cluster > global > built-in defaults.",
        }),
        ("idle_allocation", {"fields": ("idle_allocation_enabled", "idle_activity_pct", "idle_minutes")}),
        ("memory_held_idle", {"fields": ("memory_held_idle_enabled", "memory_held_mib",
                                         "memory_held_idle_minutes")}),
        ("low_efficiency", {"fields": ("low_efficiency_enabled", "low_efficiency_pct",
                                       "low_efficiency_window_days", "low_efficiency_min_gpu_hours")}),
        ("partial_use", {"fields": ("partial_use_enabled", "partial_use_minutes")}),
        ("oversized_gpu", {"fields": ("oversized_gpu_enabled", "oversized_activity_pct",
                                      "oversized_memory_mib", "oversized_large_gpu_mib",
                                      "oversized_min_gpu_hours")}),
        ("silent_gpu", {"fields": ("silent_gpu_enabled", "silent_intervals")}),
    )  # fmt: skip


class FindingEventInline(admin.TabularInline):
    model = FindingEvent
    extra = 0
    readonly_fields = ("at", "kind", "old_status", "new_status", "actor", "note")
    can_delete = False


@admin.register(Finding)
class FindingAdmin(admin.ModelAdmin):
    list_display = ("id", "rule", "subject", "project", "started", "ended", "wasted_gpu_hours",
                    "wasted_cost", "severity", "status", "detected_late")  # fmt: skip
    list_filter = ("rule", "severity", "status", "detected_late")
    search_fields = ("subject", "project__slug", "allocation__external_id")
    date_hierarchy = "started"
    raw_id_fields = ("allocation", "project", "acknowledged_by", "gpus")
    inlines = [FindingEventInline]


@admin.register(FindingEvent)
class FindingEventAdmin(admin.ModelAdmin):
    list_display = ("finding", "at", "kind", "old_status", "new_status", "actor")
    list_filter = ("kind",)
    raw_id_fields = ("finding", "actor")


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "channel", "recipient", "finding", "state", "attempts",
                    "next_attempt_at", "sent_at", "last_error")  # fmt: skip
    list_filter = ("state", "channel", "kind")
    search_fields = ("recipient", "key")
    raw_id_fields = ("finding", "user", "webhook")


@admin.register(Channel)
class ChannelAdmin(admin.ModelAdmin):
    list_display = ("team", "kind", "url", "enabled", "broken", "last_error_at", "last_error")
    list_filter = ("broken", "enabled")
    actions = ["mark_fixed"]

    @admin.action(description="Mark fixed (clear the broken flag)")
    def mark_fixed(self, request, queryset):
        queryset.update(broken=False, last_error="")


@admin.register(NotificationPreference)
class NotificationPreferenceAdmin(admin.ModelAdmin):
    list_display = ("user", "email_opt_out")
    raw_id_fields = ("user",)


@admin.register(DetectionCursor)
class DetectionCursorAdmin(admin.ModelAdmin):
    list_display = ("allocation", "next_bucket", "next_hour", "done", "updated_at")
    list_filter = ("done",)
    raw_id_fields = ("allocation",)


@admin.register(ProjectDetectionCursor)
class ProjectDetectionCursorAdmin(admin.ModelAdmin):
    list_display = ("project", "next_hour", "updated_at")
    raw_id_fields = ("project",)
