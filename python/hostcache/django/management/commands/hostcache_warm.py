import json

from django.core.management.base import BaseCommand, CommandError

from hostcache.django import metadata


class Command(BaseCommand):
    help = "Runs the registered metadata warmers (for --models app.Model ..., or every model)."

    def add_arguments(self, parser):
        parser.add_argument("--models", nargs="*", metavar="app.Model")

    def handle(self, *args, **options):
        try:
            result = metadata.warm_metadata_cache(options["models"] or None)
        except LookupError as e:
            raise CommandError(str(e))
        self.stdout.write(json.dumps(result, sort_keys=True))
