"""Keep deploy/kuberay/rayservice.yaml's ``serveConfigV2`` equal to serve_config.yaml.

    python scripts/kuberay_manifest.py           # exit 1 (and say why) when they differ
    python scripts/kuberay_manifest.py --write   # rewrite serveConfigV2 from serve_config.yaml

serveConfigV2 is serve_config.yaml verbatim except ``http_options.host``: 0.0.0.0, because
in a pod Serve must be reachable from the Kubernetes Service.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG = ROOT / "serve_config.yaml"
MANIFEST = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
BEGIN, END = "    # BEGIN serve_config.yaml\n", "    # END serve_config.yaml\n"
INDENT = "    "


def serve_config_v2(serve_config: str) -> str:
    """serve_config.yaml's text as it goes into serveConfigV2 (indented, host 0.0.0.0)."""
    out = []
    for line in serve_config.splitlines():
        if line.strip().startswith("host: 127.0.0.1"):
            line = line.replace("host: 127.0.0.1", "host: 0.0.0.0")
        out.append((INDENT + line).rstrip() + "\n")
    return "".join(out)


def render(manifest: str, serve_config: str) -> str:
    """``manifest`` with the block between the BEGIN/END markers replaced."""
    try:
        head, rest = manifest.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
    except ValueError:
        raise SystemExit(f"{MANIFEST}: the serveConfigV2 markers are missing") from None
    return head + BEGIN + serve_config_v2(serve_config) + END + tail


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite the manifest instead of checking it")
    a = ap.parse_args(argv)
    current = MANIFEST.read_text()
    wanted = render(current, SERVE_CONFIG.read_text())
    if a.write:
        MANIFEST.write_text(wanted)
        print(f"wrote {MANIFEST.relative_to(ROOT)}")
        return 0
    if current != wanted:
        print(f"{MANIFEST.relative_to(ROOT)} is out of date: run python scripts/kuberay_manifest.py --write",
              file=sys.stderr)
        return 1
    print("serveConfigV2 matches serve_config.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
