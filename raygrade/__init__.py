"""raygrade: a grading cluster on Ray.

Public entry points: :func:`raygrade.app.build_app` (the Serve application),
:class:`raygrade.Client` / :class:`raygrade.AsyncClient` (the HTTP API's clients),
:mod:`raygrade.protocol` (the wire types) and the ``raygrade`` command.
"""

__all__ = ["AsyncClient", "Client"]


def __getattr__(name: str):
    if name in __all__:  # imported on first use: ``import raygrade`` stays light
        from raygrade import client

        return getattr(client, name)
    raise AttributeError(f"module 'raygrade' has no attribute {name!r}")

__version__ = "0.1.0"
