"""Admin for the rollup tables: read-only views for checking numbers (rows are recomputed
by the rollup, so edits here would be overwritten by the next run). Pending marks and the
5-minute GPU rows have a composite key, which the admin cannot show; the GPU pages and
``GET /api/v1/efficiency`` show the 5-minute numbers."""

from django.contrib import admin

from apps.telemetry.models import (
    AllocationGpuHourly,
    CapacityDaily,
    UsageDaily,
    UsageHourly,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(AllocationGpuHourly)
class AllocationGpuHourlyAdmin(ReadOnlyAdmin):
    list_display = (
        "allocation",
        "gpu",
        "hour",
        "allocated_s",
        "observed_s",
        "busy_s",
        "idle_s",
        "mem_held_idle_s",
    )
    list_select_related = ("allocation", "gpu__node")
    search_fields = ("allocation__external_id", "gpu__uuid")
    ordering = ("-hour",)


@admin.register(UsageDaily)
class UsageDailyAdmin(ReadOnlyAdmin):
    list_display = ("day", "team", "project", "cluster", "gpu_model", "allocated_s", "busy_s")
    list_filter = ("cluster", "team")
    date_hierarchy = "day"


@admin.register(UsageHourly)
class UsageHourlyAdmin(ReadOnlyAdmin):
    list_display = (
        "hour", "project", "cluster", "gpu_model", "mig_profile", "allocated_s", "busy_s",
    )  # fmt: skip
    list_filter = ("cluster",)
    search_fields = ("project__slug", "gpu_model")


@admin.register(CapacityDaily)
class CapacityDailyAdmin(ReadOnlyAdmin):
    list_display = ("day", "cluster", "gpu_model", "capacity_s", "allocated_s", "unallocated_s")
    list_filter = ("cluster",)
    date_hierarchy = "day"
