"""crygen: fine-tune MatterGen on your crystals, generate new ones and evaluate them.

The stages in ``stages/`` are thin click scripts over the library functions here, each
returning a typed result the stage reports:

* ``dataset`` (``prepare_data``: :class:`~crygen.dataset.PreparedDataset`, checked once and
  passed down; ``prepare_dataset``), ``structures`` (structure I/O and checks), ``properties``;
* ``training``, ``generation`` and ``validation`` (``validate``: paired losses of two models,
  ``compare_models``);
* ``evaluation`` (``evaluate_generated``: MatterGen's metrics, sooner; ``evaluation.folder``
  for a results folder), ``reference`` (:class:`~crygen.reference.Reference`, resolved, hashed
  and loaded once), ``reference_build`` with ``reference_sources`` and ``hull_quality`` (the
  default hull), ``relaxation`` (potentials, batched relaxation);
* ``provenance`` (``summarize``: versions, git commit, settings, seeds and timings of a run);
* ``mattergen`` (everything MatterGen's PyPI wheel lacks: configs, model folders, properties,
  sampling speed-ups; ``mattergen_compat`` keeps the old import path), ``patches`` (every
  run-time patch of another library), ``settings``, ``layout`` (the run folder's parts), ``cli``
  and ``fileio`` (atomic outputs); ``remote`` (``make remote``: profiles, staging, jobs).
"""

__version__ = "0.1.0"

from crygen import provided_modules as _provided_modules  # noqa: E402

# torch_scatter and torch_sparse in plain PyTorch where they are not installed (crygen/patches.py)
_provided_modules.install()
