"""crygen: fine-tune MatterGen on your crystals, generate new ones and evaluate them.

The stages in ``stages/`` are thin click scripts; the code they share lives here:
``mattergen_compat`` (everything MatterGen's PyPI wheel lacks), ``structures``
(structure I/O and checks), ``fileio`` (atomic outputs), ``provenance``.
"""

__version__ = "0.1.0"
