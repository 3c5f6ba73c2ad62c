from celery import shared_task


@shared_task(name="apps.core.tasks.ping")
def ping(*, echo: str = "pong") -> dict:
    """Round-trip check: proves a worker consumes the queue and can reach the database."""
    from django.contrib.auth import get_user_model

    return {"echo": echo, "users": get_user_model().objects.count()}
