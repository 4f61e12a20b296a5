from django.core.management.base import BaseCommand, CommandError

from hostcache.django import metadata


class Command(BaseCommand):
    help = "Invalidates the cached metadata of models (app.Model) or apps (app)."

    def add_arguments(self, parser):
        parser.add_argument("labels", nargs="+", metavar="app.Model|app")

    def handle(self, *args, **options):
        from django.apps import apps
        for label in options["labels"]:
            try:
                if "." in label:
                    m = apps.get_model(label)
                    done = metadata.invalidate_metadata_cache(m._meta.object_name, m._meta.app_label)
                else:
                    done = metadata.invalidate_metadata_cache(app_name=apps.get_app_config(label).label)
            except LookupError as e:
                raise CommandError(str(e))
            self.stdout.write("invalidated " + ", ".join(done))
