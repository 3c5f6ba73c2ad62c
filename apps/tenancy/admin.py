from django.contrib import admin, messages

from apps.tenancy.models import Allocation, AllocationGpu, ApiToken, Membership, Project, Team
from apps.tenancy.services import api_token_create


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ["user"]


class ProjectInline(admin.TabularInline):
    model = Project
    extra = 0
    fields = ["slug", "name"]
    show_change_link = True


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "cost_center", "created_at"]
    search_fields = ["slug", "name", "cost_center"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [ProjectInline, MembershipInline]


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "team", "created_at"]
    list_filter = ["team"]
    search_fields = ["slug", "name", "team__name"]
    filter_horizontal = ["owners"]
    list_select_related = ["team"]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "team", "role"]
    list_filter = ["role", "team"]
    search_fields = ["user__username", "user__email", "team__name"]
    raw_id_fields = ["user"]


class AllocationGpuInline(admin.TabularInline):
    model = AllocationGpu
    extra = 0
    raw_id_fields = ["gpu"]


@admin.register(Allocation)
class AllocationAdmin(admin.ModelAdmin):
    list_display = ["external_id", "source", "project", "user_name", "start", "end"]
    list_filter = ["source", "project__team", ("end", admin.EmptyFieldListFilter)]
    search_fields = ["external_id", "user_name", "project__slug"]
    date_hierarchy = "start"
    list_select_related = ["project"]
    inlines = [AllocationGpuInline]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "user", "token_prefix", "created_at", "last_used_at", "revoked_at"]
    search_fields = ["name", "user__username"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    readonly_fields = ["token_prefix", "created_at", "last_used_at"]
    raw_id_fields = ["user"]

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        created, token = api_token_create(user=obj.user, name=obj.name)
        obj.pk = created.pk
        self.message_user(
            request,
            f"Token for {obj.user} (copy it now, it is not shown again): {token}",
            messages.WARNING,
        )
