from django.core.management.base import BaseCommand

from hostcache.django import metadata


class Command(BaseCommand):
    help = "Clears the metadata cache (O(1), seen by every worker at once); --all: the whole segment."

    def add_arguments(self, parser):
        parser.add_argument("--all", action="store_true", help="clear every entry of the segment")

    def handle(self, *args, **options):
        c = metadata.metadata_cache()
        if options["all"]:
            c.clear()
            self.stdout.write(f"cleared segment {c.name}")
        else:
            metadata.invalidate_metadata_cache()
            self.stdout.write(f"cleared the metadata cache in segment {c.name}")
