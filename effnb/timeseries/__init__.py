"""Fast time-series classification features (ROCKET, MiniRocket) and a streaming conv step.

Chapter 18 explains everything here. ROCKET (Dempster et al. 2020) turns a
series into two features per random convolution kernel, the proportion of
positive values (PPV) and the maximum of the kernel's output; MiniRocket
(Dempster et al. 2021) fixes the kernels to 84 two-valued ones and keeps only
PPV against biases drawn from training quantiles. Both run as Numba loops.
ROCKET's are vectorised over time (one contiguous loop per tap) and parallel
over series; MiniRocket's transform is vectorised over series (eight series
in the lanes of one vector, the PPV counts held in registers) and parallel
over blocks of series and dilations, with calls too small to share run on
the calling thread.

Modules, by concern: ``inputs`` (checks shared by every transform), ``data``
(datasets, the stream), ``rocket``, ``minirocket``, ``wavelets`` (Haar bands,
LightWaveS-style), ``selection`` (feature and channel selection, the shared
classifier), ``continual`` (the streaming conv net), ``reference`` (plain
float64 versions the tests trust), ``peers`` (sktime, torch, backend names),
``experiments`` (the chapter's races and studies), ``stalls`` (why a short
parallel call can wait for a busy core), ``summary`` (the numbers, phrases and
measurement checks it shows) and ``figures`` (its figures, and its tables with
units). The names below are the public surface:
``from effnb import timeseries as T; T.MiniRocket(...)``.
"""
from __future__ import annotations

from .continual import ContinualTCN, _tcn_step
from .data import DATASETS, load_dataset, ucr_stream
from .experiments import (compare_datasets, compile_times, score_dataset, selection_study, selection_variants,
                          streaming_bench, throughput_sweep)
from .figures import (accuracy_view, dataset_speed_table, dataset_speed_view, quality_view, selected_view,
                      stall_pivot, stall_pivot_view, stall_table_view, streaming_view, study_view, sweep_pivot,
                      sweep_pivot_view, sweep_table_view)
from .figures import streaming as streaming_figure
from .figures import throughput as throughput_figure
from .inputs import as_panel, pad_equal
from .lanes import W as MINI_LANES
from .minirocket import (MINI_COMBOS, MINI_LENGTH, MiniRocket, _mini_conv, _mini_pairs, golden_quantiles,
                         mini_dilations)
from .peers import ours_backend, sktime_backend, torch_backend, transformers
from .rocket import ROCKET_LENGTHS, Rocket, SelectedRocket, _normalise, _rocket_kernel, rocket_kernels
from .selection import classifier, feature_scores, select_channels, select_features
from .stalls import parallel_stalls
from .summary import (accuracy_table, both, faster, guard_phrase, paired_points, quality_numbers, scale_words,
                      selected_numbers, selected_table, stall_numbers, streaming_check, streaming_numbers,
                      thread_check, study_numbers, sweep_checks, sweep_numbers, sweep_table)
from .wavelets import SelectedWaveletRocket, WaveletRocket, haar_dwt, haar_idwt, wavelet_bands

__all__ = ["Rocket", "MiniRocket", "SelectedRocket", "WaveletRocket", "SelectedWaveletRocket", "ContinualTCN",
           "select_features", "select_channels", "feature_scores", "classifier", "as_panel", "pad_equal",
           "load_dataset", "ucr_stream", "rocket_kernels", "mini_dilations", "golden_quantiles", "haar_dwt",
           "haar_idwt", "wavelet_bands", "DATASETS", "MINI_COMBOS", "MINI_LENGTH", "ROCKET_LENGTHS",
           "transformers", "ours_backend", "sktime_backend", "torch_backend", "compare_datasets", "score_dataset",
           "selection_study", "selection_variants", "throughput_sweep", "compile_times", "streaming_bench",
           "throughput_figure", "streaming_figure",
           "accuracy_table", "quality_numbers", "selected_table", "selected_numbers", "study_numbers",
           "streaming_numbers", "sweep_numbers", "sweep_table", "parallel_stalls", "paired_points", "stall_numbers",
           "guard_phrase", "streaming_check", "sweep_checks", "thread_check", "both", "faster", "scale_words",
           "accuracy_view", "dataset_speed_table", "dataset_speed_view", "quality_view", "selected_view",
           "stall_pivot", "stall_pivot_view", "stall_table_view", "streaming_view", "study_view", "sweep_pivot",
           "sweep_pivot_view", "sweep_table_view"]
