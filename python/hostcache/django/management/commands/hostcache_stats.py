import json

from django.core.management.base import BaseCommand

from hostcache.django import metadata


class Command(BaseCommand):
    help = "The metadata cache's statistics, summed over every process of this host."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="one JSON object")

    def handle(self, *args, **options):
        report = metadata.get_cache_stats()
        seg = metadata.metadata_cache()
        report["segment"] = dict(seg.stats(), name=seg.name)
        if options["json"]:
            self.stdout.write(json.dumps(report, sort_keys=True))
            return
        w = self.stdout.write
        w(f"segment {seg.name}: {report['segment']['entries']} entries, "
          f"{report['cache_size_mb']} MiB used of {report['segment']['capacity_bytes'] / (1 << 20):.1f} MiB")
        for k in ("total_requests", "cache_hits", "cache_misses", "hit_ratio",
                  "avg_response_time_cached", "avg_response_time_uncached", "performance_improvement"):
            w(f"  {k:28s} {report[k]}")
        for name, m in sorted(report["methods"].items()):
            w(f"  method {name}: {m['total_requests']} requests, hit ratio {m['hit_ratio']}%, "
              f"cached {m['avg_response_time_cached']} ms, uncached {m['avg_response_time_uncached']} ms")
