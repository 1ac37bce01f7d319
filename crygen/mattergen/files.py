"""What MatterGen's PyPI wheel (mattergen==1.0.3) lacks on disk: GemNet's scale-factor file,
and the sampling config crygen ships in its place.

The wheel is code only: it has no Hydra ``conf/``, no ``sampling_conf/`` and no
``common/gemnet/gemnet-dT.json``, which GemNet reads whenever it is built.
:func:`ensure_mattergen_files` puts the GemNet-dT scale factors where GemNet looks; they are
only initial values: every checkpoint carries its own as (frozen) parameters.
``crygen/sampling_conf/default.yaml`` (:data:`SAMPLING_CONFIG_DIR`) is the predictor-corrector
sampling config; ``crygen.mattergen.configs.sampling_overrides`` sets its step count.
"""

from __future__ import annotations

import json
from pathlib import Path

from crygen.fileio import CrygenError, atomic_path

SAMPLING_CONFIG_DIR = Path(__file__).resolve().parent.parent / "sampling_conf"

# Published GemNet-dT scale factors (OCP / fairchem, ``gemnet-dT.json``); MatterGen ships none.
GEMNET_DT_SCALE_FACTORS = {
    "comment": "GemNet-dT scaling factors (initial values; checkpoints store their own)",
    "TripInteraction_1_had_rbf": 18.873615264892578,
    "TripInteraction_1_sum_cbf": 7.996850490570068,
    "AtomUpdate_1_sum": 1.220463752746582,
    "TripInteraction_2_had_rbf": 16.10817527770996,
    "TripInteraction_2_sum_cbf": 7.614634037017822,
    "AtomUpdate_2_sum": 0.9690994620323181,
    "TripInteraction_3_had_rbf": 15.01930046081543,
    "TripInteraction_3_sum_cbf": 7.025179862976074,
    "AtomUpdate_3_sum": 0.8903237581253052,
    "OutBlock_0_sum": 1.6437848806381226,
    "OutBlock_0_had": 16.161039352416992,
    "OutBlock_1_sum": 1.1077653169631958,
    "OutBlock_1_had": 13.54678726196289,
    "OutBlock_2_sum": 0.9477927684783936,
    "OutBlock_2_had": 12.754337310791016,
    "OutBlock_3_sum": 0.9059251546859741,
    "OutBlock_3_had": 13.484951972961426,
}



def mattergen_package_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("mattergen")
    if spec is None or spec.origin is None:
        raise CrygenError(None, "mattergen is not installed; run `make setup`")
    return Path(spec.origin).parent


def ensure_mattergen_files() -> Path:
    """Write the GemNet scale-factor file into the installed package if it is missing."""
    target = mattergen_package_dir() / "common" / "gemnet" / "gemnet-dT.json"
    if not target.exists():
        with atomic_path(target) as tmp:
            tmp.write_text(json.dumps(GEMNET_DT_SCALE_FACTORS, indent=1))
    return target

