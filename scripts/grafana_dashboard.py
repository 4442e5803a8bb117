"""Write deploy/grafana/raygrade.json: one Grafana panel per metric in raygrade.metrics.METRICS.

    python scripts/grafana_dashboard.py           # exit 1 when the committed file is out of date
    python scripts/grafana_dashboard.py --write   # regenerate it

Import it in the Grafana that Ray's metrics setup runs (``ray metrics launch-prometheus`` and
Grafana with Ray's provisioning, or KubeRay's Prometheus/Grafana): Dashboards → New → Import,
then pick the Prometheus data source that scrapes Ray's metrics port.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raygrade.metrics import METRICS  # noqa: E402

OUT = ROOT / "deploy" / "grafana" / "raygrade.json"
UNITS = {"histogram": "s", "counter": "ops", "gauge": "short"}


def dashboard() -> dict:
    """The dashboard: a ``datasource`` variable and a 2-column grid of time-series panels."""
    panels = []
    for i, m in enumerate(METRICS.values()):
        unit = "percentunit" if m.name.endswith("utilisation") else UNITS[m.kind]
        panels.append({
            "id": i + 1, "type": "timeseries", "title": m.name.removeprefix("raygrade_").replace("_", " "),
            "description": m.description, "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": chr(65 + k), "expr": expr, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                        for k, (legend, expr) in enumerate(m.promql())],
        })
    return {
        "title": "raygrade", "uid": "raygrade", "schemaVersion": 39, "version": 1, "editable": True,
        "tags": ["raygrade", "ray"], "time": {"from": "now-1h", "to": "now"}, "refresh": "30s",
        "templating": {"list": [{"name": "datasource", "label": "Prometheus", "type": "datasource",
                                 "query": "prometheus", "current": {}, "hide": 0}]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args(argv)
    if a.write:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(render())
        print(f"wrote {OUT.relative_to(ROOT)}")
        return 0
    if not OUT.exists() or OUT.read_text() != render():
        print(f"{OUT.relative_to(ROOT)} is out of date: run python scripts/grafana_dashboard.py --write",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
