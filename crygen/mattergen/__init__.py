"""crygen's layer over MatterGen (mattergen==1.0.3, used unmodified), one module per purpose:

* ``files``: what MatterGen's PyPI wheel lacks on disk: GemNet's scale-factor file
  (:func:`ensure_mattergen_files`) and the sampling config crygen ships (``SAMPLING_CONFIG_DIR``).
* ``configs``: MatterGen run configs built by crygen (denoiser, diffusion, Lightning and data
  module, whole model), the dataset reader named in them (``crystal_dataset_from_cache``), and
  what sampling reads from a config (``diffusion_steps``, ``sampling_overrides``).
* ``model_dir``: a model dir (``config.yaml``, ``checkpoints/last.ckpt``, ``crygen_model.json``)
  as a :class:`ModelDir` that checks once and reads once, and the path-taking functions of before.
* ``adaptations``: published MatterGen configs fitted to the pinned stack when they are read.
* ``published``: MatterGen's published model names, found in or fetched into the Hugging Face cache.
* ``num_atoms``: the atoms-per-cell distribution a model samples from.
* ``properties``: property conditioning on any property name and on conditioned bases
  (registration, adapter configs, embeddings, what conditions a model dir takes).
* ``validity``: SMACT validity as MatterGen's evaluation asks it, answered sooner.
* ``speedups``: faster replacements for MatterGen functions the sampler calls every step.

Importing any of them is free of torch (the stages import them before choosing a device).
The names most code needs are re-exported here (``from crygen import mattergen as mc``);
``adaptations``, ``published``, ``validity`` and ``speedups`` are reached as modules.
``crygen.mattergen_compat`` is the old single module, kept for the names written into the
``config.yaml`` files of model dirs written before this package.
"""

from crygen.mattergen.configs import (AVERAGE_DENSITY, crystal_dataset_from_cache, data_module_config,
                                      denoiser_config, diffusion_module_config, diffusion_steps,
                                      lightning_module_config, model_config, sampling_overrides, with_data_module)
from crygen.mattergen.files import (GEMNET_DT_SCALE_FACTORS, SAMPLING_CONFIG_DIR, ensure_mattergen_files,
                                    mattergen_package_dir)
from crygen.mattergen.model_dir import (CRYGEN_MODEL_INFO, ModelDir, check_model_dir, checkpoint_info,
                                        load_lightning_module, load_model_config, read_checkpoint,
                                        read_model_config, read_model_info, write_model_dir)
from crygen.mattergen.num_atoms import num_atoms_distribution, register_num_atoms_distribution
from crygen.mattergen.properties import (CATEGORICAL, CHEMICAL_SYSTEM, FLOAT, SPACE_GROUP, adapter_config,
                                         adapter_parameter_prefixes, builtin_properties, fit_property_scalers,
                                         init_adapter_module, model_properties, model_property_definitions,
                                         property_embedding_config, property_embedding_configs,
                                         register_properties)
