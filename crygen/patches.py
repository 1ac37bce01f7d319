"""Every change crygen makes to another library at run time, declared once, in :data:`PATCHES`.

MatterGen, CHGNet and torch are used unmodified on disk. Where crygen needs them to behave
differently in one process (a faster function, an answer computed in advance, a property name
MatterGen's hard-coded list lacks) it says so here: what is replaced, by what, why, and the
installed versions the replacement was read against. Four kinds, one mechanism:

* ``replace``: an attribute (a function, a method) is swapped for the duration of a
  ``with applied(...)`` block and restored on leaving it, even on error.
* ``fill``: a ``functools.cached_property`` of one object gets a value crygen computed (the
  answer MatterGen would compute, sooner); :func:`fill` checks the attribute still is a cached
  property, so the write can only pre-empt MatterGen's own computation, never hide a method.
* ``wrap``: one object's method wrapped, on that object only (it lives as long as the object);
  :func:`wrap` checks the object is of the declared class.
* ``extend``: an entry added to a registry (a dict or list) that MatterGen reads by name when
  it builds a model from ``config.yaml``. Such a build can happen in MatterGen's own code with no
  crygen scope around it (``CrystalGenerator`` loading a crygen model dir), so an entry lives as
  long as the process; :func:`extend` adds it only if absent.
* ``provide``: a module another package would provide, served from crygen's plain version only
  when that package is not installed (:mod:`crygen.provided_modules`: a finder placed after
  every other, so an installed package always wins, installed at every interpreter start in
  crygen's venv). No distribution is faked: ``importlib.metadata`` still reports the package
  absent, and ``provenance`` says which ran.

:func:`check_versions` runs when every stage starts (``crygen.cli.stage``) and in the tests: an
installed version other than the one a patch was read against stops the stage with one line
naming the patch, so an upgrade fails loudly; whoever upgrades re-reads the replaced code and
updates the version here. It reads package metadata only (no import). Applying a patch also
checks that its target still exists.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field
from functools import cached_property
from importlib import metadata
from typing import Any, Callable, Iterator

from crygen.fileio import CrygenError

KINDS = ("replace", "fill", "wrap", "extend", "provide")


@dataclass(frozen=True)
class Patch:
    name: str
    kind: str
    target: str  # "module:attribute.path" (replace, extend), "module:Class.attribute" (fill, wrap), "module" (provide)
    why: str
    checked_against: dict[str, str]  # distribution -> the version whose code this was read against
    replacement: str | None = None  # "module:function" (replace), "module" (provide); None: given when applied

    def owner_and_attribute(self) -> tuple[Any, str]:
        module, _, path = self.target.partition(":")
        *parents, attribute = path.split(".")
        owner = importlib.import_module(module)
        for part in parents:
            owner = getattr(owner, part)
        if not hasattr(owner, attribute):
            raise CrygenError(self.target, f"patch {self.name!r}: the target no longer exists "
                                           f"(read against {_versions(self.checked_against)})")
        return owner, attribute


def _versions(pins: dict[str, str]) -> str:
    return ", ".join(f"{d} {v}" for d, v in pins.items())


def _declare(*patches: Patch) -> dict[str, Patch]:
    for p in patches:
        assert p.kind in KINDS, p
    return {p.name: p for p in patches}


_MATTERGEN = {"mattergen": "1.0.3"}
_METRICS = "mattergen.evaluation.metrics.structure"

PATCHES: dict[str, Patch] = _declare(
    Patch("sampling.radius_graph", "replace", "mattergen.common.utils.data_utils:radius_graph_pbc_ocp",
          "builds each crystal's periodic neighbour list from the images each pair of atoms needs, "
          "instead of the same image box for every crystal of a batch: the sampler's graph "
          "construction on a 64-crystal batch; the same edges (tests/test_mattergen_compat.py)",
          _MATTERGEN, "crygen.mattergen.speedups:radius_graph_pbc_ocp_per_pair_images"),
    Patch("sampling.bilinear", "replace",
          "mattergen.common.gemnet.layers.efficient:EfficientInteractionBilinear.forward",
          "the bilinear form as one matrix product instead of emb_size batched products: a quarter "
          "of the sampler's CPU time at batch 64; scores within float32 rounding",
          _MATTERGEN, "crygen.mattergen.speedups:efficient_bilinear_in_one_product"),
    Patch("sampling.score_probe", "wrap", "mattergen.diffusion.sampling.pc_sampler:PredictorCorrector._score_fn",
          "counts the model's calls and keeps each batch's first cell score, so a failure within the "
          "first denoising step is reported as the model's, in one line, instead of redrawn",
          _MATTERGEN),
    Patch("evaluation.smact_validity", "replace", f"{_METRICS}:smact_validity",
          "SMACT's charge-balance search stopped at the first balanced combination (MatterGen's "
          "enumerates all of them: hours on a many-element crystal); the same verdicts",
          {**_MATTERGEN, "smact": "3.2.0"}, "crygen.mattergen.validity:smact_validity"),
    Patch("evaluation.is_smact_valid", "replace", f"{_METRICS}:is_smact_valid",
          "MatterGen's metrics ask for each structure's checks twice: answered from checks "
          "computed once by MatterGen's own functions", _MATTERGEN),
    Patch("evaluation.structure_validity", "replace", f"{_METRICS}:structure_validity",
          "as evaluation.is_smact_valid", _MATTERGEN),
    Patch("evaluation.dataset", "fill", "mattergen.evaluation.metrics.core:BaseMetricsCapability.dataset",
          "MatterGen's deepcopy of every entry, made by a pickle round trip: the same copies, "
          "half the time", _MATTERGEN),
    Patch("evaluation.is_unique", "fill", "mattergen.evaluation.metrics.structure:StructureMetricsCapability.is_unique",
          "MatterGen's own uniqueness loop, with each structure's reduced form computed once",
          _MATTERGEN),
    Patch("evaluation.matches_in_reference", "fill",
          "mattergen.evaluation.metrics.structure:StructureMetricsCapability.matches_in_reference",
          "MatterGen's own novelty loop, with reference structures' reduced forms kept between runs",
          _MATTERGEN),
    Patch("reference.is_ordered", "fill", "mattergen.evaluation.reference.reference_dataset:ReferenceDataset.is_ordered",
          "read from the reference file's recorded ordering instead of every structure's sites",
          _MATTERGEN),
    Patch("relaxation.one_backward_pass", "replace", "torch.autograd:grad",
          "CHGNet asks autograd for forces, then stress, each with a differentiable graph; "
          "inference needs one pass without it: the same numbers, under half the CPU time. "
          "It recognises CHGNet's call by CHGNet._compute's local BatchedGraph `g`",
          {"chgnet": "0.4.2", "torch": "2.13.0"}),
    Patch("ops.torch_scatter", "provide", "torch_scatter",
          "MatterGen imports scatter, scatter_add, segment_csr and segment_coo from it; compiling it "
          "was most of a fresh set-up. The same results on real sampler and training states "
          "(tests/test_torch_ops.py)", _MATTERGEN, "crygen.mattergen.torch_ops"),
    Patch("ops.torch_sparse", "provide", "torch_sparse",
          "GemNet lists each edge's triplets with its SparseTensor (rows selected by index); "
          "the same triplets in the same order", _MATTERGEN, "crygen.mattergen.torch_ops"),
    Patch("model.no_init_before_load", "replace", "torch.nn.init:orthogonal_",
          "GemNet draws each weight matrix orthogonal (a QR decomposition per layer: 1.5 s of a "
          "MatterGen-size build) and a checkpoint then overwrites every weight; while a module "
          "is built only to load one, the draw is skipped. Strict loading proves nothing is left "
          "unloaded; sampling seeds its RNG after the build",
          {**_MATTERGEN, "torch": "2.13.0"}, "crygen.mattergen.model_dir:_orthogonal_skipped"),
    Patch("model.property_source_ids", "extend", "mattergen.common.utils.globals:PROPERTY_SOURCE_IDS",
          "MatterGen accepts a conditioning property only if its name is in this list",
          _MATTERGEN),
    Patch("model.num_atoms_distributions", "extend",
          "mattergen.common.data.num_atoms_distribution:NUM_ATOMS_DISTRIBUTIONS",
          "a model's atoms-per-cell distribution from its training data, by a name the sampling "
          "config refers to", _MATTERGEN),
)


def installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def version_problems(patches: dict[str, Patch] = PATCHES) -> list[str]:
    """One line per patch whose libraries are installed at another version than it was read against
    (a library not installed here is not used here: nothing to check)."""
    problems = []
    for patch in patches.values():
        for distribution, expected in patch.checked_against.items():
            found = installed_version(distribution)
            if found is not None and found.split("+")[0] != expected:
                problems.append(f"patch {patch.name!r} was written for {distribution} {expected}, "
                                f"{found} is installed: re-read {patch.target} and update crygen/patches.py")
    return problems


def check_versions() -> None:
    problems = version_problems()
    if problems:
        raise CrygenError("crygen/patches.py", problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))


def _declared(name: str, kind: str) -> Patch:
    patch = PATCHES[name]
    assert patch.kind == kind, f"{name} is a {patch.kind} patch"
    return patch


def _resolve(spec: str) -> Callable:
    module, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass
class _Applied:
    originals: dict[str, Any] = field(default_factory=dict)


_active = _Applied()
_INHERITED = object()


def original(name: str) -> Any:
    """The library's own attribute that patch ``name`` replaces (what a replacement falls back to),
    whether or not the patch is applied now."""
    if name in _active.originals:
        return _active.originals[name]
    owner, attribute = _declared(name, "replace").owner_and_attribute()
    return getattr(owner, attribute)


@contextlib.contextmanager
def applied(*names: str, **given: Callable) -> Iterator[None]:
    """Apply the ``replace`` patches ``names`` for the block; a patch declared without a
    replacement takes it from ``given`` under its name with dots as double underscores
    (``evaluation__is_smact_valid=...``). Nested use of one patch keeps the outer original."""
    given = {k.replace("__", "."): v for k, v in given.items()}
    swapped: list[tuple[str, Any, str, Any, bool]] = []
    try:
        for name in names:
            patch = _declared(name, "replace")
            replacement = given[name] if patch.replacement is None else _resolve(patch.replacement)
            owner, attribute = patch.owner_and_attribute()
            outermost = name not in _active.originals
            if outermost:
                _active.originals[name] = getattr(owner, attribute)
            # what the owner itself holds (an inherited method is restored by deleting the swap)
            swapped.append((name, owner, attribute, vars(owner).get(attribute, _INHERITED), outermost))
            setattr(owner, attribute, replacement)
        yield
    finally:
        for name, owner, attribute, held, outermost in reversed(swapped):
            if held is _INHERITED:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, held)
            if outermost:
                del _active.originals[name]


def fill(name: str, obj: Any, value: Any) -> None:
    """Give ``obj``'s cached property (patch ``name``) the value MatterGen would compute."""
    patch = _declared(name, "fill")
    owner, attribute = patch.owner_and_attribute()
    declared = owner.__dict__.get(attribute)
    if not isinstance(declared, cached_property) or getattr(type(obj), attribute, None) is not declared:
        raise CrygenError(patch.target, f"patch {name!r}: not a cached property of {type(obj).__name__} any more")
    obj.__dict__[attribute] = value


def wrap(name: str, obj: Any, make_wrapper: Callable[[Callable], Callable]) -> None:
    """Replace ``obj``'s method (patch ``name``) by ``make_wrapper(the bound method)``, on ``obj`` only."""
    owner, attribute = _declared(name, "wrap").owner_and_attribute()
    if not isinstance(obj, owner):
        raise CrygenError(PATCHES[name].target, f"patch {name!r}: {type(obj).__name__} is not a {owner.__name__}")
    setattr(obj, attribute, make_wrapper(getattr(obj, attribute)))


def extend(name: str, key: Any, value: Any = None) -> None:
    """Add ``key`` (a list's item, or a dict's key with ``value``) to the registry of patch ``name``."""
    owner, attribute = _declared(name, "extend").owner_and_attribute()
    registry = getattr(owner, attribute)
    if isinstance(registry, list):
        if key not in registry:
            registry.append(key)
    else:
        registry[key] = value

