"""manage.py set_rate MODEL PRICE --from YYYY-MM-DD [--cluster C]"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.chargeback.services import RateCardError, date_parse, price_parse, rate_set


class Command(BaseCommand):
    help = (
        "Set the price of one GPU-hour of a model from a date, fleet-wide or for one cluster. "
        "Running it again with the same arguments changes nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument("model", help="GPU model: its slug, name or any alias")
        parser.add_argument("price", help="price per GPU-hour, e.g. 2.49")
        parser.add_argument(
            "--from", dest="effective_from", required=True, help="effective from YYYY-MM-DD"
        )
        parser.add_argument("--cluster", help="cluster slug (default: fleet-wide)")
        parser.add_argument(
            "--create", action="store_true", help="create the model when the name is unknown"
        )

    def handle(self, *args, **options):
        try:
            result = rate_set(
                model=options["model"],
                price=price_parse(text=options["price"]),
                effective_from=date_parse(text=options["effective_from"]),
                cluster_slug=options["cluster"],
                create_model=options["create"],
            )
        except RateCardError as exc:
            raise CommandError(str(exc)) from None
        rate = result.rate
        where = f"cluster {rate.cluster.slug}" if rate.cluster_id else "fleet-wide"
        self.stdout.write(
            f"{result.status}: {rate.gpu_model.name} {where} from {rate.effective_from}: "
            f"{rate.price_per_gpu_hour:.4f} {settings.FLOPWATCH_CURRENCY} per GPU-hour"
        )
