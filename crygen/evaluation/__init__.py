"""Metrics of generated crystals: MatterGen's ``MetricsEvaluator``, the same numbers, sooner.

The metric names, definitions and values are MatterGen's (validity, uniqueness, novelty,
energy above hull after MP2020 correction, stability within 0.1 eV/atom, S.U.N.). crygen gets
them faster without changing them, in one process:

* SMACT validity answers at the first valid oxidation-state combination
  (``mattergen_compat.smact_validity``); each structure's validity checks run once (MatterGen's
  metrics ask twice);
* uniqueness and novelty run MatterGen's own loops (``get_unique``/``get_matches``) on MatterGen's
  own groups, but each pair is decided by :class:`PreparedMatcher`, which takes the same steps
  as MatterGen's ``DefaultDisorderedStructureMatcher.fit`` with the work that depends on one
  structure only (copy without oxidation states, composition, Niggli and primitive reduction,
  Hume-Rothery disordering) done once per structure instead of once per pair; the reference's
  reduced forms are kept between evaluations (:class:`ReducedFormStore`, read in a few queries);
* the capability's dataset (MatterGen deep-copies every entry) is copied by a pickle round trip,
  the same entries in half the time (:func:`_dataset`);
* whether the reference is ordered is read from its stored sites (``reference.all_ordered``)
  instead of decoding every entry;
* BLAS runs on one thread: matching inverts tens of thousands of 3x3 matrices.

The results are handed to MatterGen's evaluator, which computes every metric from them.

The modules: :mod:`~crygen.evaluation.metrics` (:func:`evaluate`, what is reported),
:mod:`~crygen.evaluation.matching` (uniqueness and novelty pairs), :mod:`~crygen.evaluation.mattergen_hooks`
(every run-time reach into MatterGen), :mod:`~crygen.evaluation.records` (settings and sample
accounting an evaluation records) and :mod:`~crygen.evaluation.folder` (``eval-gen``: a
results folder in, its output folder out).
"""

from crygen.dataset import structures_from_cache, training_structures
from crygen.evaluation.matching import (
    PreparedMatcher,
    ReducedFormStore,
    _dataset,
    _Prepared,
    _reduced_form,
    _reduced_once,
    reduced_form_store_path,
)
from crygen.evaluation.mattergen_hooks import answer_is_ordered, answered_checks, fast_smact_validity, precompute
from crygen.evaluation.metrics import (
    ELEMENTS_ONLY_MAJORITY,
    HULL_METRIC_WORDS,
    REFERENCE_METRIC_WORDS,
    STABILITY_THRESHOLD,
    STRICT_STABILITY_THRESHOLD,
    Evaluation,
    evaluate,
    mattergen_metrics,
    reported,
)
from crygen.evaluation.records import (
    SAMPLE_PARTS,
    VALIDITY_KINDS,
    evaluation_settings,
    generation_info,
    sample_counts,
    settings_differences,
    settings_folder_name,
    structures_sha256,
    structures_source,
    validity_over_samples,
)

__all__ = [
    "ELEMENTS_ONLY_MAJORITY", "HULL_METRIC_WORDS", "REFERENCE_METRIC_WORDS", "SAMPLE_PARTS", "STABILITY_THRESHOLD",
    "STRICT_STABILITY_THRESHOLD", "VALIDITY_KINDS", "Evaluation", "PreparedMatcher", "ReducedFormStore",
    "answer_is_ordered", "answered_checks", "evaluate", "evaluation_settings", "fast_smact_validity",
    "generation_info", "mattergen_metrics", "precompute", "reduced_form_store_path", "reported", "sample_counts",
    "settings_differences", "settings_folder_name", "structures_from_cache", "structures_sha256", "structures_source",
    "training_structures", "validity_over_samples",
]
