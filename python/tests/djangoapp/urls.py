from django.urls import include, path

urlpatterns = [path("groupcast/", include("groupcast.django.urls"))]
