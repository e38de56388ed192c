from django.contrib.auth import views as auth_views
from django.conf import settings
from django.urls import include, path

from chat import views

urlpatterns = [
    path("", views.index, name="index"),
    path("chat/<str:room>/", views.room, name="room"),
    path("chat/<str:room>/messages", views.post_message, name="post_message"),
    path("chat/<str:room>/announce", views.announce, name="announce"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("groupcast/", include("groupcast.django.urls")),  # the hooks
]

if settings.GROUPCAST_PUBLIC_URL:  # development: groupcast on another port
    urlpatterns.append(path("client.js", views.client_js))
