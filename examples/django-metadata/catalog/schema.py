import graphene
from graphene_django import DjangoObjectType

from . import models
from .extractor import extractor


class AuthorType(DjangoObjectType):
    class Meta:
        model = models.Author
        fields = ("id", "name", "born", "books")


class BookType(DjangoObjectType):
    class Meta:
        model = models.Book
        fields = ("id", "title", "isbn", "published", "pages", "author", "publisher")


class Query(graphene.ObjectType):
    books = graphene.List(BookType)
    model_metadata = graphene.Field(graphene.JSONString, app=graphene.String(required=True),
                                    model=graphene.String(required=True))

    def resolve_books(self, info):
        return models.Book.objects.select_related("author", "publisher").all()

    def resolve_model_metadata(self, info, app, model):
        user = info.context.META.get("HTTP_X_USER")
        return extractor.extract_model_metadata(app, model, int(user) if user else None)


schema = graphene.Schema(query=Query)
