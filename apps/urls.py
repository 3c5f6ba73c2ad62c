from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from apps.api import api
from apps.core import views as core_views

admin.site.site_header = "flopwatch administration"
admin.site.site_title = "flopwatch"

urlpatterns = [
    path("healthz", core_views.healthz, name="healthz"),
    path(
        "login/",
        auth_views.LoginView.as_view(template_name="registration/login.html"),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("", include("apps.waste.urls")),
    path("chargeback/", include("apps.chargeback.urls")),
    path("", include("apps.dashboard.urls")),
]
