"""User mistakes in every command end in one line naming the problem (exit 2), not a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("cmd, says", [
    ([sys.executable, "-m", "raygrade.cli", "demo", "--saf", "/nope/saf"], "SAF dataset not found at /nope/saf"),
    ([sys.executable, "-m", "raygrade.datasets", "saf", "/tmp/rg-out", "--saf", "/nope/saf"], "SAF dataset not found"),
    ([sys.executable, "jobs/regrade.py", "/nope/dataset", "/tmp/rg-out", "--baseline"], "/nope/dataset"),
    ([sys.executable, "jobs/regrade.py", "/nope/dataset", "/tmp/rg-out", "--provider", "/nope/provider.yaml"],
     "/nope/provider.yaml"),
])
def test_a_user_mistake_is_one_line(cmd, says):
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and says in lines[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_validation_errors_are_joined_on_one_line():
    from pydantic import ValidationError

    from raygrade._cli import one_line
    from raygrade.config import RaygradeArgs

    with pytest.raises(ValidationError) as err:
        RaygradeArgs.model_validate({"provider": {"modle": "x", "timeout_s": -1}})
    line = one_line(err.value)
    assert "\n" not in line and "provider.modle" in line and "provider.timeout_s" in line


def _raygrade(*args: str, home: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAYGRADE_")}
    env.update({"RAYGRADE_HOME": str(home), **(env_extra or {})})
    return subprocess.run([sys.executable, "-m", "raygrade.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.parametrize("url, says", [
    ("postgres://rg:hunter2@127.0.0.1/rg", "write postgresql+psycopg://"),
    ("mysql://rg@127.0.0.1/rg", "SQLite or PostgreSQL, not 'mysql'"),
    ("not a url", "not a database URL"),
    ("sqlite:///{tmp}/typo/jobs.db", "no such folder"),
    ("sqlite:///{tmp}/jobs-typo.db", "no job store at"),
    # A closed port on loopback: PostgreSQL unreachable is one line too, and the password is not in it.
    ("postgresql+psycopg://rg:hunter2@127.0.0.1:9/rg?connect_timeout=2", "cannot open the job store"),
])
def test_a_wrong_store_url_is_one_line_and_creates_nothing(tmp_path, url, says):
    url = url.format(tmp=tmp_path)
    home = tmp_path / "home"
    for args in (["keys", "--store-url", url, "list"], ["keys", "create", "--tenant", "a", "--store-url", url]):
        out = _raygrade(*args, home=home)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and says in lines[0], out.stderr[-2000:]
        assert "hunter2" not in out.stderr and "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []  # no store, no folder, no blobs


@pytest.mark.parametrize("option, value", [("--items-per-day", str(10**23)), ("--max-active-jobs", str(2**31)),
                                           ("--tokens-per-day", "-1")])
def test_a_quota_out_of_range_is_one_line(tmp_path, option, value):
    """Past the store's integer columns (it was an OverflowError traceback from SQLite) or negative."""
    out = _raygrade("quotas", "set", "school-a", option, value, home=tmp_path / "home")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and option.lstrip("-").replace("-", "_") in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_the_default_store_is_made_on_first_use(tmp_path):
    out = _raygrade("keys", "create", "--tenant", "school-a", home=tmp_path / "home")
    assert out.returncode == 0 and out.stdout.startswith("rg_"), out.stderr[-2000:]
    assert (tmp_path / "home" / "jobs.db").is_file()


def test_every_option_of_every_command_has_a_help_line_and_there_is_a_version():
    import argparse

    from raygrade import __version__
    from raygrade.cli import build_parser

    def walk(p: argparse.ArgumentParser, path: str):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from walk(child, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction):
                yield path, action

    missing = [f"{path} {'/'.join(a.option_strings) or a.dest}" for path, a in walk(build_parser(), "raygrade")
               if a.option_strings and not a.help]
    assert missing == [], missing
    out = subprocess.run([sys.executable, "-m", "raygrade.cli", "--version"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"raygrade {__version__}"
