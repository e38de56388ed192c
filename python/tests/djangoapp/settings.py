"""A Django project for the tests: sessions, auth, the groupcast app."""

import os

SECRET_KEY = "test-only-secret-key"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "groupcast.django",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "djangoapp.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ.get("GROUPCAST_TEST_DB", ":memory:")}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast, tests only
CHANNEL_LAYERS = {"default": {"BACKEND": "groupcast.layers.GroupcastChannelLayer",
                              "CONFIG": {"url": os.environ.get("GROUPCAST_TEST_URL", "http://127.0.0.1:8080")}}}
GROUPCAST_HOOK_SECRET = "hook-secret-for-tests"
GROUPCAST_CONSUMER = "djangoapp.consumers.RoomConsumer"
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "handlers": {"null": {"class": "logging.NullHandler"}},
           "loggers": {"groupcast.django": {"handlers": ["null"], "propagate": False}}}
