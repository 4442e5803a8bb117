"""raygrade: a grading cluster on Ray.

Public entry points: :func:`raygrade.app.build_app` (the Serve application),
:mod:`raygrade.protocol` (the wire types) and the ``raygrade`` command.
"""

__version__ = "0.1.0"
