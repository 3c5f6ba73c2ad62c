"""Login everywhere, except what authenticates by token or must answer without a session."""

from django.conf import settings
from django.contrib.auth.middleware import LoginRequiredMiddleware as DjangoLoginRequired


class LoginRequiredMiddleware(DjangoLoginRequired):
    """Django's login-required middleware with path-prefix exemptions from settings.

    The agent, scheduler and API endpoints answer 401 themselves (a redirect to a login page is
    no use to a program), and ``/healthz`` is probed by load balancers.
    """

    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.path.startswith(settings.LOGIN_EXEMPT_PREFIXES):
            return None
        return super().process_view(request, view_func, view_args, view_kwargs)
