from django.urls import path

from apps.dashboard import views

urlpatterns = [
    path("", views.home, name="home"),
    path("teams/", views.teams, name="teams"),
    path("projects/", views.projects, name="projects"),
    path("teams/<slug:slug>/", views.team, name="team"),
    path("projects/<slug:slug>/", views.project, name="project"),
    path("jobs/<int:pk>/", views.job, name="job"),
    path("fleet/", views.fleet, name="fleet"),
    path("fleet/state/", views.fleet_fragment, name="fleet-fragment"),
    path("gpus/<str:uuid>/", views.gpu, name="gpu"),
    path("assets/plotly-<str:version>.min.js", views.plotly_js, name="plotly-js"),
]
