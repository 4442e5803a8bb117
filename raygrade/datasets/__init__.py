"""Datasets: the SAF short-answer corpus, handwriting-style page rendering, sample jobs, and
writing regrade datasets in :mod:`raygrade.bulk`'s layout.

- :mod:`~raygrade.datasets.saf`: load SAF (Filighera et al. 2022) from ``../shared/data/saf``.
- :mod:`~raygrade.datasets.render`: answers as handwriting-style page images.
- :mod:`~raygrade.datasets.sample_jobs`: grading jobs built from SAF (``raygrade demo``, tests, benchmarks).
- :mod:`~raygrade.datasets.convert`: :func:`write_dataset`, :func:`saf_to_dataset`, :func:`job_to_dataset`;
  ``python -m raygrade.datasets`` on the command line.
"""

from __future__ import annotations

from raygrade.datasets.convert import job_to_dataset, saf_to_dataset, write_dataset

__all__ = ["job_to_dataset", "saf_to_dataset", "write_dataset"]
