"""Keep the KubeRay manifests' ``serveConfigV2`` equal to their serve configs.

- deploy/kuberay/rayservice.yaml ← serve_config.yaml
- deploy/kuberay/rayservice.selfhosted-gpu.yaml ← deploy/serve_config.selfhosted-gpu.yaml

    python scripts/kuberay_manifest.py           # exit 1 (and say why) when one differs
    python scripts/kuberay_manifest.py --write   # rewrite serveConfigV2 from the serve configs

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
#: (serve config, the manifest that carries it)
PAIRS = [(SERVE_CONFIG, MANIFEST),
         (ROOT / "deploy" / "serve_config.selfhosted-gpu.yaml",
          ROOT / "deploy" / "kuberay" / "rayservice.selfhosted-gpu.yaml")]
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


def render(manifest: str, serve_config: str, name: Path = MANIFEST) -> str:
    """``manifest`` with the block between the BEGIN/END markers replaced."""
    try:
        head, rest = manifest.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
    except ValueError:
        raise SystemExit(f"{name}: the serveConfigV2 markers are missing") from None
    return head + BEGIN + serve_config_v2(serve_config) + END + tail


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite the manifest instead of checking it")
    a = ap.parse_args(argv)
    stale = 0
    for serve_config, manifest in PAIRS:
        current = manifest.read_text()
        wanted = render(current, serve_config.read_text(), manifest)
        if a.write:
            manifest.write_text(wanted)
            print(f"wrote {manifest.relative_to(ROOT)}")
        elif current != wanted:
            print(f"{manifest.relative_to(ROOT)} is out of date: run python scripts/kuberay_manifest.py --write",
                  file=sys.stderr)
            stale += 1
        else:
            print(f"{manifest.relative_to(ROOT)}: serveConfigV2 matches {serve_config.relative_to(ROOT)}")
    return 1 if stale else 0

if __name__ == "__main__":
    sys.exit(main())
