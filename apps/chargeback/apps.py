from django.apps import AppConfig


class ChargebackConfig(AppConfig):
    name = "apps.chargeback"
    label = "chargeback"
    verbose_name = "Chargeback"
