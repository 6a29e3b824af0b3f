"""Parses a metrics exposition from stdin with the Python prometheus_client parsers (an
implementation independent of the one under test) and prints it as JSON on stdout.

Usage: parse_metrics.py prometheus|openmetrics < exposition

Output: a list of families, each {"name", "type", "help", "samples": [{"name", "labels",
"value"}]}. A parse error exits with status 1 and the parser's message on stderr.
"""
import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families as parse_prometheus
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)


def main():
    fmt = sys.argv[1]
    text = sys.stdin.read()
    parse = {"prometheus": parse_prometheus, "openmetrics": parse_openmetrics}[fmt]
    families = []
    try:
        for family in parse(text):
            families.append(
                {
                    "name": family.name,
                    "type": family.type,
                    "help": family.documentation,
                    "samples": [
                        {
                            "name": s.name,
                            "labels": s.labels,
                            # JSON has no NaN or infinities: give those as strings.
                            "value": s.value if math.isfinite(s.value) else str(s.value),
                        }
                        for s in family.samples
                    ],
                }
            )
    except Exception as e:  # the parsers raise ValueError and others
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    json.dump(families, sys.stdout)


if __name__ == "__main__":
    main()
