from django.conf import settings
from django.contrib import admin

from apps.chargeback.models import GpuModel, GpuModelAlias, MonthClose, Rate, Statement


class GpuModelAliasInline(admin.TabularInline):
    model = GpuModelAlias
    extra = 1


class RateInline(admin.TabularInline):
    model = Rate
    extra = 1
    fields = ["cluster", "effective_from", "price_per_gpu_hour"]


@admin.register(GpuModel)
class GpuModelAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "alias_list"]
    search_fields = ["name", "slug", "aliases__name"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [GpuModelAliasInline, RateInline]

    @admin.display(description="aliases")
    def alias_list(self, obj: GpuModel) -> str:
        return ", ".join(alias.name for alias in obj.aliases.all())

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("aliases")


@admin.register(GpuModelAlias)
class GpuModelAliasAdmin(admin.ModelAdmin):
    list_display = ["name", "gpu_model"]
    list_filter = ["gpu_model"]
    search_fields = ["name", "gpu_model__name"]


@admin.register(Rate)
class RateAdmin(admin.ModelAdmin):
    list_display = [
        "gpu_model",
        "cluster",
        "effective_from",
        "price_per_gpu_hour",
        "currency",
        "created_at",
    ]
    list_filter = ["gpu_model", "cluster"]
    search_fields = ["gpu_model__name"]
    date_hierarchy = "effective_from"
    list_select_related = ["gpu_model", "cluster"]

    @admin.display(description="currency")
    def currency(self, obj: Rate) -> str:
        return settings.FLOPWATCH_CURRENCY


class StatementInline(admin.StackedInline):
    model = Statement
    extra = 0
    can_delete = False
    readonly_fields = [
        "currency",
        "billing_time_zone",
        "spread_unallocated",
        "total_cost",
        "computed_at",
    ]
    exclude = ["rows"]


@admin.register(MonthClose)
class MonthCloseAdmin(admin.ModelAdmin):
    """Closes happen on the chargeback page (finance) and reopens there too (fleet admins,
    with a reason); the admin shows their history and changes nothing."""

    list_display = ["month", "closed_at", "closed_by", "reopened_at", "reopened_by"]
    list_filter = [("reopened_at", admin.EmptyFieldListFilter)]
    date_hierarchy = "month"
    readonly_fields = [
        "month",
        "closed_at",
        "closed_by",
        "reopened_at",
        "reopened_by",
        "reopen_reason",
    ]
    inlines = [StatementInline]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
