"""TOML manifest -> frozen dataclasses. Every error names the manifest key and what was expected.

Resolution order (as timm's ``resolve_data_config``): manifest value > model spec default >
built-in default. Relative paths resolve against the manifest's own folder.

- :mod:`.config`: the dataclasses (their field defaults are the manifest's defaults) and the fingerprint;
- :mod:`.rules`: what each backend allows (``[runtime]`` keys, device kinds, model formats);
- :mod:`.reader`: reading one table, collecting every error; :mod:`.tables`: one reader per table;
- :mod:`.load`: ``parse_manifest`` and ``load_manifest``.
"""

from .config import (
    BUILTIN_MODELS,
    CPU_BATCH_SIZE,
    DEFAULT_EXTENSIONS,
    DEFAULT_JOB_NAME,
    DEFAULT_MODEL,
    DatasetConfig,
    JobConfig,
    Manifest,
    ModelConfig,
    RuntimeConfig,
    default_batch_size,
)
from .load import TABLES, load_manifest, parse_manifest
from .rules import BACKEND_RULES, PLUGIN_RULES, RUNTIME_KEYS, BackendRules, RuntimeKey, rules_for

__all__ = [
    "BACKEND_RULES",
    "BUILTIN_MODELS",
    "CPU_BATCH_SIZE",
    "DEFAULT_EXTENSIONS",
    "DEFAULT_JOB_NAME",
    "DEFAULT_MODEL",
    "PLUGIN_RULES",
    "RUNTIME_KEYS",
    "TABLES",
    "BackendRules",
    "DatasetConfig",
    "JobConfig",
    "Manifest",
    "ModelConfig",
    "RuntimeConfig",
    "RuntimeKey",
    "default_batch_size",
    "load_manifest",
    "parse_manifest",
    "rules_for",
]
