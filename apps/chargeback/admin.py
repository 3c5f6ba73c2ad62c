from django.contrib import admin

from apps.chargeback.models import GpuModel, GpuModelAlias, Rate


class GpuModelAliasInline(admin.TabularInline):
    model = GpuModelAlias
    extra = 1


class RateInline(admin.TabularInline):
    model = Rate
    extra = 1
    fields = ["cluster", "effective_from", "price_per_gpu_hour"]


@admin.register(GpuModel)
class GpuModelAdmin(admin.ModelAdmin):
    list_display = ["name", "slug"]
    search_fields = ["name", "slug", "aliases__name"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [GpuModelAliasInline, RateInline]


@admin.register(Rate)
class RateAdmin(admin.ModelAdmin):
    list_display = ["gpu_model", "cluster", "effective_from", "price_per_gpu_hour", "created_at"]
    list_filter = ["gpu_model", "cluster"]
    search_fields = ["gpu_model__name"]
    date_hierarchy = "effective_from"
