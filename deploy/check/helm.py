#!/usr/bin/env python3
"""Lints and renders a Helm chart offline with Helm's own engine (the Helm v4
SDK, from PyPI's helm-python-sdk), for deploy-check's tests.

    helm.py lint CHART VALUES_JSON     -> the lint report, as JSON
    helm.py render CHART VALUES_JSON   -> {template path: manifest}, as JSON

Exit 3 when the SDK is not installed; a template that fails prints Helm's
message on stderr and exits 1.
"""
import json
import sys

try:
    import helm_python as helm
except ImportError:
    print("helm-python-sdk is not installed (pip install helm-python-sdk)", file=sys.stderr)
    sys.exit(3)


def main():
    what, chart, values = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    try:
        if what == "lint":
            out = helm.lint(chart, values, strict=True, namespace="seckill")
        elif what == "render":
            with helm.Chart.load(chart) as c:
                out = c.render(values, name="sale", namespace="seckill", is_install=True)
        else:
            sys.exit(f"unknown command {what}")
    except helm.HelmError as e:
        print(e, file=sys.stderr)
        sys.exit(1)
    json.dump(out, sys.stdout)


main()
