from django.conf import settings


def flopwatch(request):
    """Values every page template may use."""
    from apps.tenancy.selectors import user_roles

    roles = user_roles(user=request.user) if request.user.is_authenticated else frozenset()
    return {
        "flopwatch_currency": settings.FLOPWATCH_CURRENCY,
        "user_roles": roles,
    }
