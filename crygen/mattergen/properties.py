"""Property conditioning on any property name, on any MatterGen base.

MatterGen accepts only the properties in its hard-coded list and fine-tunes an adapter that
replaces a conditioned base's own. Here :func:`register_properties` adds names to that list,
:func:`adapter_config` adds an adapter to a base that may already be conditioned,
:func:`init_adapter_module` / :func:`fit_property_scalers` start it from the base's weights,
and :func:`model_property_definitions` says what conditions a model dir takes, MatterGen's
published ones included.
"""

from __future__ import annotations

import os
from copy import deepcopy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crygen.mattergen.model_dir import ModelDir

# MatterGen accepts a property only if its name is in the hard-coded PROPERTY_SOURCE_IDS
# list (datasets, PropertyValues and PropertyEmbedding assert it; the guidance transforms
# find conditional fields by it). crygen appends user property names to that same list
# object, which every MatterGen module imported by name. The model config names
# ``RegisteredPropertyEmbedding`` for such a property, so instantiating the config — in
# crygen or in MatterGen's own CrystalGenerator, in a fresh process — registers the name
# before MatterGen checks it; a model dir needs nothing but crygen importable.

# The property kinds crygen embeds (crygen/properties.py infers them from the data).
FLOAT, CATEGORICAL, CHEMICAL_SYSTEM, SPACE_GROUP = "float", "categorical", "chemical_system", "space_group"


_BUILTIN_PROPERTIES: tuple[str, ...] | None = None


def builtin_properties() -> tuple[str, ...]:
    """MatterGen's own property names (the list as it was before crygen added any)."""
    global _BUILTIN_PROPERTIES
    if _BUILTIN_PROPERTIES is None:
        from mattergen.common.utils.globals import PROPERTY_SOURCE_IDS

        _BUILTIN_PROPERTIES = tuple(PROPERTY_SOURCE_IDS)
    return _BUILTIN_PROPERTIES


def register_properties(names) -> None:
    from crygen import patches

    builtin_properties()  # taken before the first addition
    for name in names:
        patches.extend("model.property_source_ids", name)


def _property_embedding_class():
    from mattergen.property_embeddings import PropertyEmbedding

    class RegisteredPropertyEmbedding(PropertyEmbedding):
        def __init__(self, name: str, *args, **kwargs):
            register_properties([name])
            super().__init__(name, *args, **kwargs)

    return RegisteredPropertyEmbedding


def _categorical_embedding_class():
    import torch

    class CategoricalEmbedding(torch.nn.Module):
        """A learned vector per category. Takes category indices (the dataset stores them as
        floats, NaN where missing) or the category labels themselves (a condition given to
        MatterGen's generator, e.g. ``{"solid_electrolyte": "yes"}``)."""

        def __init__(self, categories: list[str], hidden_dim: int):
            super().__init__()
            self.categories = [str(c) for c in categories]
            self.hidden_dim = hidden_dim
            self.embedding = torch.nn.Embedding(len(self.categories), hidden_dim)

        def forward(self, x) -> torch.Tensor:
            device = self.embedding.weight.device
            if isinstance(x, torch.Tensor):
                # missing values (NaN) take index 0; PropertyEmbedding replaces their
                # embedding by the unconditional one
                index = torch.nan_to_num(x.reshape(-1).float(), nan=0.0).long().to(device)
            else:
                index = torch.tensor([self.categories.index(str(v)) for v in x], device=device)
            return self.embedding(index)

    return CategoricalEmbedding


def __getattr__(name: str):
    # The classes subclass torch modules; built on first use so importing this module
    # stays free of torch (the stages import it before choosing a device).
    if name == "RegisteredPropertyEmbedding":
        cls = _property_embedding_class()
    elif name == "CategoricalEmbedding":
        cls = _categorical_embedding_class()
    else:
        raise AttributeError(name)
    cls.__module__ = __name__
    cls.__qualname__ = name
    globals()[name] = cls
    return cls


def property_embedding_config(name: str, definition: dict[str, Any], hidden_dim: int) -> dict[str, Any]:
    """MatterGen's PropertyEmbedding for one property, as MatterGen's own Hydra conf builds
    it for its built-in ones: scalars through a StandardScaler (fitted on the training
    values) and a sinusoidal encoding, chemical systems multi-hot, space groups a table."""
    kind = definition["kind"]
    unconditional = {"_target_": "mattergen.property_embeddings.EmbeddingVector", "hidden_dim": hidden_dim}
    identity = {"_target_": "torch.nn.Identity"}
    if kind == FLOAT:
        conditional = {"_target_": "mattergen.diffusion.model_utils.NoiseLevelEncoding", "d_model": hidden_dim}
        scaler = {"_target_": "mattergen.common.utils.data_utils.StandardScalerTorch"}
    elif kind == CATEGORICAL:
        conditional = {"_target_": f"{__name__}.CategoricalEmbedding",
                       "categories": list(definition["categories"]), "hidden_dim": hidden_dim}
        scaler = identity
    elif kind == CHEMICAL_SYSTEM:
        conditional = {"_target_": "mattergen.property_embeddings.ChemicalSystemMultiHotEmbedding",
                       "hidden_dim": hidden_dim}
        scaler = identity
    elif kind == SPACE_GROUP:
        conditional = {"_target_": "mattergen.property_embeddings.SpaceGroupEmbeddingVector",
                       "hidden_dim": hidden_dim}
        scaler = identity
    else:
        raise ValueError(f"unknown property kind {kind!r}")
    target = ("mattergen.property_embeddings.PropertyEmbedding" if name in builtin_properties()
              else f"{__name__}.RegisteredPropertyEmbedding")
    return {"_target_": target, "name": name, "conditional_embedding_module": conditional,
            "unconditional_embedding_module": unconditional, "scaler": scaler}


def adapter_config(base_config: dict[str, Any], definitions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The base model config with MatterGen's adapter denoiser (GemNetTAdapter + GemNetTCtrl)
    embedding ``definitions``, as MatterGen's finetune script composes it.

    A base that is already conditioned keeps its embeddings (and, through
    :func:`init_adapter_module`, their weights) and gains adapters for the properties it
    lacks; MatterGen's own finetune replaces the base's adapters instead, so a model it
    fine-tunes from ``space_group`` on another property no longer takes a space group
    (MatterGen issue #204). A property the base already embeds keeps the base's embedding."""
    config = deepcopy(base_config)
    model = config["lightning_module"]["diffusion_module"]["model"]
    adapt = dict(model.get("property_embeddings_adapt") or {})
    known = set(adapt) | set(model.get("property_embeddings") or {})
    hidden = int(model["hidden_dim"])
    adapt.update((name, property_embedding_config(name, d, hidden))
                 for name, d in sorted(definitions.items()) if name not in known)
    model["_target_"] = "mattergen.adapter.GemNetTAdapter"
    model["property_embeddings_adapt"] = adapt
    model["gemnet"]["_target_"] = "mattergen.common.gemnet.gemnet_ctrl.GemNetTCtrl"
    previous = list(model["gemnet"].get("condition_on_adapt") or [])
    model["gemnet"]["condition_on_adapt"] = previous + sorted(set(adapt) - set(previous))
    return config


def property_embedding_configs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every property embedding of a model config (trained with the model or by an adapter)."""
    model = config["lightning_module"]["diffusion_module"]["model"]
    return {**(model.get("property_embeddings") or {}), **(model.get("property_embeddings_adapt") or {})}


def model_properties(config: dict[str, Any]) -> list[str]:
    return sorted(property_embedding_configs(config))


# what a condition on a property may be, from its conditional embedding's class (MatterGen's
# published models carry no crygen definitions)
_KIND_OF_EMBEDDING = {
    "mattergen.property_embeddings.ChemicalSystemMultiHotEmbedding": CHEMICAL_SYSTEM,
    "mattergen.property_embeddings.SpaceGroupEmbeddingVector": SPACE_GROUP,
    "mattergen.diffusion.model_utils.NoiseLevelEncoding": FLOAT,
}


def model_property_definitions(model_dir: ModelDir | str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The properties a model dir is conditioned on, each with what a condition on it may be:
    crygen's definition where crygen fine-tuned it (a float's range, a category's labels),
    otherwise its kind read from the config's embedding (a float then takes any number)."""
    from crygen.mattergen.model_dir import ModelDir

    model = ModelDir.unchecked(model_dir)
    recorded = model.info.get("properties", {})
    definitions = {}
    for name, embedding in property_embedding_configs(model.config).items():
        if name in recorded:
            definitions[name] = recorded[name]
            continue
        conditional = embedding.get("conditional_embedding_module") or {}
        target = str(conditional.get("_target_", ""))
        if target.endswith(".CategoricalEmbedding"):
            definitions[name] = {"kind": CATEGORICAL, "categories": list(conditional["categories"])}
        elif target in _KIND_OF_EMBEDDING:
            definitions[name] = {"kind": _KIND_OF_EMBEDDING[target]}
            if (embedding.get("scaler") or {}).get("log10_transform"):
                definitions[name]["positive"] = True  # it embeds log10 of the value
        else:
            definitions[name] = {"kind": "unsupported", "embedding": target}
    return definitions


def adapter_parameter_prefixes(names) -> tuple[str, ...]:
    """The parameter names of the adapters for ``names`` (GemNetTAdapter / GemNetTCtrl)."""
    model = "diffusion_module.model."
    return tuple(p for n in names for p in (f"{model}property_embeddings_adapt.{n}.",
                                            f"{model}gemnet.cond_adapt_layers.{n}.",
                                            f"{model}gemnet.cond_mixin_layers.{n}."))


def init_adapter_module(config: dict[str, Any], base_state: dict[str, Any], trainable: list[str] | None = None):
    """Instantiate the adapter model with the base weights (a conditioned base's adapters
    included). ``trainable``: train only the adapters of these properties, the rest frozen
    (MatterGen's ``full_finetuning=false``); None trains everything."""
    from hydra.utils import instantiate

    register_properties(model_properties(config))
    module = instantiate(config["lightning_module"])
    state = module.state_dict()
    state.update((k, base_state[k]) for k in state.keys() & base_state.keys())
    module.load_state_dict(state, strict=True)
    if trainable is not None:
        prefixes = adapter_parameter_prefixes(trainable)
        for name, param in module.named_parameters():
            param.requires_grad_(name.startswith(prefixes))
    return module


def fit_property_scalers(module, train_values: dict[str, Any]) -> None:
    """Standardise each scalar property with its training mean and std (NaN ignored), as
    MatterGen's SetPropertyScalers callback does."""
    import torch

    model = module.diffusion_module.model
    embeddings = {**model.property_embeddings, **model.property_embeddings_adapt}
    for name, values in train_values.items():
        embeddings[name].fit_scaler(torch.as_tensor(values, dtype=torch.float32))

