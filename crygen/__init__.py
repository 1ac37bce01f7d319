"""crygen: fine-tune MatterGen on your crystals, generate new ones and evaluate them.

The stages in ``stages/`` are thin click scripts; the code they share lives here:
``mattergen_compat`` (everything MatterGen's PyPI wheel lacks), ``config_adaptations``
(MatterGen configs fitted to the pinned stack when read), ``model_source`` (published model
names, the Hugging Face cache), ``structures`` (structure I/O and checks), ``fileio`` (atomic
outputs).
"""

__version__ = "0.1.0"
