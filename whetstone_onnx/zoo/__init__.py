"""Batch conversion of a model zoo: a TOML manifest in, one output directory per model
and a versioned summary out.

Every model is converted by a separate worker process (``zoo/worker.py``), so a
crash, a hang (``timeout``) or running out of memory (``memory_limit``) costs that
model only. The worker writes into a staging directory next to the model's
directory; the staging directory is renamed into place once the model's record
(``zoo.json``) is in it, so a model directory either is complete or does not
exist, and ``resume`` can trust what it finds. The same ``run_job`` runs under the
local executor (a thread per running model, each waiting on its worker) and as a
Dask task on a cluster's workers.
"""
from __future__ import annotations

from .batch import DEFAULT_TIMEOUT_S, ZooResult, convert_zoo
from .executors import EXECUTORS
from .jobs import STATUSES, run_job
from .manifest import OPTION_TYPES, Manifest, ZooModel, convert_arguments, convert_defaults, read_manifest

__all__ = ["DEFAULT_TIMEOUT_S", "EXECUTORS", "OPTION_TYPES", "STATUSES", "Manifest", "ZooModel", "ZooResult",
           "convert_arguments", "convert_defaults", "convert_zoo", "read_manifest", "run_job"]
