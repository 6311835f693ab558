"""Weights distribution for the nodes and the command line: which official files exist and how they arrive.

Plain Python (the standard library; ``diffbir_core`` only to check that a download opens as the expected
checkpoint kind). Never imports ComfyUI, ``nodes`` or ``diffbir_cli``; the nodes and the command line import it by
its top-level name (``from diffbir_weights import ensure_file``), like ``diffbir_core``: the pack's ``__init__``
puts its folder on ``sys.path``.

* ``catalogue``: every official file once (``lookup(name)`` -> official URL, models folder, alternative
  folders, SHA-256 where known with its source) and ``LOADERS`` (which folder a loader node's file widget reads).
* ``fetch``: ``ensure_file`` (one file, for a node: progress callback, cancel, offline switch, mirror) and
  ``fetch_weights`` (many files, for the command line).
* ``download`` (one robust transfer: resume, size, kind and SHA-256 checks), ``lockfile`` (the SHA-256 record),
  ``mirrors`` (``DIFFBIR_WEIGHTS_MIRROR``), ``progress`` (a text progress bar).
* ``embed``: ``python -m diffbir_weights.embed workflows/*.json`` writes the frontend's ``models`` metadata
  into workflows and blueprints from the catalogue.
"""

from .catalogue import CATALOGUE, LOADERS, WeightFile, files_needed, lookup
from .download import DownloadCancelled, DownloadError, DownloadInterrupted
from .fetch import OFFLINE_ENV, FetchError, MissingWeightsError, ensure_file, fetch_weights, offline_requested
from .mirrors import MIRROR_ENV

__all__ = [
    "CATALOGUE", "LOADERS", "WeightFile", "files_needed", "lookup",
    "DownloadCancelled", "DownloadError", "DownloadInterrupted",
    "OFFLINE_ENV", "FetchError", "MissingWeightsError", "ensure_file", "fetch_weights", "offline_requested",
    "MIRROR_ENV",
]
