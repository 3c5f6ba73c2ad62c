from django.apps import AppConfig


class WasteConfig(AppConfig):
    name = "apps.waste"
    label = "waste"
    verbose_name = "Waste"
