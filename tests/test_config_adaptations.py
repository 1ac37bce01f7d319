"""crygen.mattergen.adaptations on MatterGen's nine published configs: what each adaptation
changes, that nothing else changes, and that the adapted config builds on the pinned stack."""

from __future__ import annotations

import inspect
from copy import deepcopy

import pytest
import yaml

from crygen import mattergen as mc
from crygen.mattergen.adaptations import ADAPTATIONS, adapt_config
from tests.helpers import MATTERGEN_CONFIGS, PUBLISHED_MODELS


def published_config(name: str) -> dict:
    return yaml.safe_load((MATTERGEN_CONFIGS / name / "config.yaml").read_text())


def test_torch_refuses_what_the_verbose_adaptation_removes():
    """Written for torch 2.13: if torch takes `verbose` again, the adaptation stands down."""
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    assert "verbose" not in inspect.signature(ReduceLROnPlateau.__init__).parameters
    scheduler = published_config("mattergen_base")["lightning_module"]["scheduler_partials"][0]["scheduler"]
    kwargs = {k: v for k, v in scheduler.items() if not k.startswith("_")}
    import torch

    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(TypeError, match="verbose"):
        ReduceLROnPlateau(optimizer, **kwargs)


@pytest.mark.parametrize("name", PUBLISHED_MODELS)
def test_each_published_config_needs_exactly_the_named_adaptations(name):
    raw = published_config(name)
    adapted = deepcopy(raw)
    assert adapt_config(adapted) == ["lr-scheduler-verbose"]
    assert adapt_config(deepcopy(adapted)) == []  # idempotent: an adapted config needs nothing
    # the one difference: the scheduler's verbose flag
    del raw["lightning_module"]["scheduler_partials"][0]["scheduler"]["verbose"]
    assert adapted == raw


def test_the_adapted_scheduler_is_built(tiny_model):
    """The whole scheduler partial of a published config, adapted, builds with the pinned torch."""
    import torch
    from hydra.utils import instantiate

    config = published_config("chemical_system")
    adapt_config(config)
    partial = instantiate(config["lightning_module"]["scheduler_partials"][0]["scheduler"])
    scheduler = partial(optimizer=torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))]))
    assert scheduler.factor == 0.6 and scheduler.patience == 100


def test_every_adaptation_says_why_and_for_which_versions():
    names = [a.name for a in ADAPTATIONS]
    assert len(names) == len(set(names))
    for adaptation in ADAPTATIONS:
        assert adaptation.why and adaptation.written_for


def test_crygens_own_configs_need_no_adaptation(tiny_model):
    assert mc.read_model_config(tiny_model)[1] == []
