"""A one-file Django site for the live preset tests (tests/integration/test_framework_django.py).

Settings, URLs and views in one module, run as ``python django_app.py runserver``
(or ``migrate``, ``shell``). Stock django.contrib.auth and django.contrib.sessions;
the environment chooses the database and the session backend:

- ``APP_DB``: the PostgreSQL database on 127.0.0.1:5432 (user postgres);
- ``APP_SESSION_ENGINE``: ``django.contrib.sessions.backends.db`` or ``...cache``;
- ``APP_REDIS``: the Redis URL of the default cache (the cache backend's sessions);
- ``APP_SECRET_KEY``.

Routes: ``POST /login/`` (username, password) → 302 ``/account/``; ``GET /account/``
→ ``hello <username>`` or ``anonymous``; ``POST /logout/`` → 302 ``/``; ``/`` → 200.
CSRF is off: the test client is a script, and the preset does not depend on it.
"""

from __future__ import annotations

import os
import sys

from django.contrib.auth import authenticate, login, logout
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path

SECRET_KEY = os.environ.get("APP_SECRET_KEY", "")
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = __name__
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("APP_DB", "test"),
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": "5432",
    }
}
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": os.environ.get("APP_REDIS", "redis://127.0.0.1:6379/0"),
    }
}
SESSION_ENGINE = os.environ.get("APP_SESSION_ENGINE", "django.contrib.sessions.backends.db")
# Leftover test sessions expire from Redis by themselves.
SESSION_COOKIE_AGE = 600
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("home\n")


def login_view(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponse("login form\n")
    user = authenticate(
        request,
        username=request.POST.get("username", ""),
        password=request.POST.get("password", ""),
    )
    if user is None:
        return HttpResponse("wrong password\n")
    login(request, user)
    return HttpResponseRedirect("/account/")


def account(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return HttpResponse(f"hello {request.user.get_username()}\n")
    return HttpResponse("anonymous\n")


def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return HttpResponseRedirect("/")


urlpatterns = [
    path("", home),
    path("login/", login_view),
    path("account/", account),
    path("logout/", logout_view),
]

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_app")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
