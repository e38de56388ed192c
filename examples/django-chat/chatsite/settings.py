"""The chat example's settings: everything deployment-specific from the environment."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "true") == "true"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "*").split(",")

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "groupcast.django",
    "chat",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "chatsite.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
WSGI_APPLICATION = "chatsite.wsgi.application"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                         "NAME": os.environ.get("DATABASE_PATH", str(BASE_DIR / "db.sqlite3")),
                         "CONN_MAX_AGE": 60}}  # a hook per connect: keep the database connection
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "index"
# Shared with groupcast when both sit behind one load balancer (one site):
# set SESSION_COOKIE_DOMAIN only if they are on different subdomains.
SESSION_COOKIE_DOMAIN = os.environ.get("SESSION_COOKIE_DOMAIN") or None

# Was: {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}
CHANNEL_LAYERS = {"default": {
    "BACKEND": "groupcast.layers.GroupcastChannelLayer",
    "CONFIG": {"url": os.environ.get("GROUPCAST_URL", "http://127.0.0.1:8080"),
               "api_key": os.environ.get("GROUPCAST_API_KEY") or None,
               "group_policies": os.environ.get("GROUP_POLICIES")},
}}
# Where browsers reach groupcast (/client.js, /ws): empty when the load
# balancer routes /ws and /client.js on this very site.
GROUPCAST_PUBLIC_URL = os.environ.get("GROUPCAST_PUBLIC_URL", "http://127.0.0.1:8080")
GROUPCAST_HOOK_SECRET = os.environ.get("HOOK_SECRET", "dev-hook-secret")
GROUPCAST_CONSUMER = "chat.consumers.ChatConsumer"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"chat": {"handlers": ["console"], "level": "INFO"},
                "groupcast.django": {"handlers": ["console"], "level": "INFO"}},
}
