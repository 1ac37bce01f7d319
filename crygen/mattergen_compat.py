"""The old home of crygen's MatterGen layer, now the package ``crygen.mattergen``; kept so that
model dirs written before it keep loading.

Their ``config.yaml`` files name classes and functions here by ``_target_``, which Hydra
imports when MatterGen or crygen builds the model or its data:
``crygen.mattergen_compat.crystal_dataset_from_cache`` (each split of the data module),
``crygen.mattergen_compat.RegisteredPropertyEmbedding`` and
``crygen.mattergen_compat.CategoricalEmbedding`` (property embeddings). Each is the very
object of ``crygen.mattergen`` (tests/test_mattergen_compat.py loads them by these names);
every other name this module had is found in the package too. Configs crygen writes now
name ``crygen.mattergen.configs`` and ``crygen.mattergen.properties``. Write no new code
against this module.
"""

from __future__ import annotations

from typing import Any

from crygen.mattergen.configs import crystal_dataset_from_cache  # noqa: F401  (a _target_ of old configs)

_EMBEDDINGS = ("RegisteredPropertyEmbedding", "CategoricalEmbedding")  # built on first use, as there


def __getattr__(name: str) -> Any:
    import crygen.mattergen as package
    from crygen.mattergen import properties, speedups, validity

    if name in _EMBEDDINGS:
        return getattr(properties, name)
    for module in (package, properties, validity, speedups):
        if not name.startswith("__") and name in vars(module):
            return vars(module)[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
