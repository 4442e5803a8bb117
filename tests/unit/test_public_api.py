"""The package facade: ``import raygrade`` gives what users import, lazily."""

import subprocess
import sys

import pytest


def test_the_public_facade_exports_what_it_lists():
    import raygrade

    assert sorted(raygrade.__all__) == sorted(raygrade._EXPORTS)
    for name in raygrade.__all__:
        assert getattr(raygrade, name).__name__ == name
    with pytest.raises(AttributeError):
        raygrade.no_such_name  # noqa: B018


def test_importing_raygrade_loads_neither_ray_nor_openai():
    code = ("import sys, raygrade; raygrade.GradingJob; "
            "print(sorted(m for m in ('ray', 'openai', 'fastapi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
