"""Scrapes an OpenMetrics endpoint and parses it with the Prometheus client's parser.

Usage: scrape_metrics.py URL — prints {family: [{"name", "labels", "value"}]} as JSON.
Fails (non-zero) when the text does not parse.
"""

import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main():
    with urllib.request.urlopen(sys.argv[1], timeout=10) as response:
        content_type = response.headers.get("Content-Type", "")
        if not content_type.startswith("application/openmetrics-text"):
            sys.exit(f"unexpected content type {content_type!r}")
        text = response.read().decode("utf-8")
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = [
            {"name": s.name, "labels": s.labels, "value": s.value} for s in family.samples
        ]
    print(json.dumps(families))


if __name__ == "__main__":
    main()
