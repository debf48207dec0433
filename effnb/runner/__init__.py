"""The runner: chapters as a registry (spec), their inputs (hash), papermill runs
(execute), sweeps, the book's pages and the ``effnb`` command line.

``from effnb import runner`` gives the whole API: ``runner.find_chapter``,
``runner.resolve``, ``runner.run_chapter``, ``runner.inputs_hash`` ...
"""
from .execute import (KERNEL, KERNEL_ARGS, RUNS_DIR, RunPaths, hardware_id, is_current, read_sidecar,  # noqa: F401
                      refresh, run_chapter, run_name, run_paths, why_stale)
from .inputs import (changed_inputs, declared_inputs, input_digests, inputs_hash, package_files,  # noqa: F401
                     source_hash)
from .spec import (NOTEBOOKS_DIR, CellFailed, ChapterSpec, EffnbError, EnvironmentUnsupported, Param,  # noqa: F401
                   UsageError, _fmt, _param, check_environment, discover, effective_overrides, find_chapter,
                   load_chapter, parse_assignments, parse_parameters, resolve)
from ..chapter import NOTEBOOK_ENV, SIDECAR_ENV  # noqa: F401
