from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from graphene_django.views import GraphQLView

from catalog import views

urlpatterns = [
    path("graphql/", csrf_exempt(GraphQLView.as_view(graphiql=False))),
    path("metadata/<str:app>/<str:model>/", views.model_metadata),
    path("relationships/<str:app>/<str:model>/", views.relationships),
    path("invalidate/", views.invalidate),
    path("invalidate/<str:app>/<str:model>/", views.invalidate),
    path("cache/<str:key>/", views.cache_value),
    path("stats/", views.stats),
    path("pid/", views.pid),
]
