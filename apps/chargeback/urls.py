from django.urls import path, register_converter

from apps.chargeback import views


class MonthConverter:
    """YYYY-MM; the view checks the month number and answers 404 for nonsense."""

    regex = r"\d{4}-\d{2}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value) -> str:
        return str(value)


register_converter(MonthConverter, "month")

app_name = "chargeback"
urlpatterns = [
    path("", views.statement, name="statement"),
    path("<month:month>.csv", views.statement_csv, name="csv"),
    path("<month:month>/close/", views.close, name="close"),
    path("<month:month>/reopen/", views.reopen, name="reopen"),
]
