from django.urls import path

from apps.waste import views

app_name = "waste"

urlpatterns = [
    path("findings/", views.findings, name="findings"),
    path("findings/preferences/", views.preferences, name="preferences"),
    path("findings/<int:pk>/", views.finding, name="finding"),
    path("findings/<int:pk>/<str:action>/", views.finding_act, name="finding-act"),
    # Login-exempt (settings.LOGIN_EXEMPT_PREFIXES): the signed token says who is acting.
    path("findings/act/<str:token>/", views.act_by_link, name="act"),
]
