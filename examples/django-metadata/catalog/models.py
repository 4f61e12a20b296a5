from django.db import models


class Publisher(models.Model):
    name = models.CharField(max_length=100)
    country = models.CharField(max_length=2, blank=True)


class Author(models.Model):
    name = models.CharField(max_length=100)
    born = models.DateField(null=True, blank=True)


class Book(models.Model):
    title = models.CharField(max_length=200)
    isbn = models.CharField(max_length=13, unique=True)
    published = models.DateField(null=True)
    pages = models.PositiveIntegerField(default=0)
    author = models.ForeignKey(Author, related_name="books", on_delete=models.CASCADE)
    publisher = models.ForeignKey(Publisher, related_name="books", null=True, on_delete=models.SET_NULL)
