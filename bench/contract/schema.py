"""The record schema: every column and file name of a suite run, in one place.

One row of ``trials.parquet`` is one training run:
- ``kind == SEARCH``: a search method's trial, trained on the train split, scored on the
  validation split (val_*); ``test_*`` empty.
- ``kind == RETRAIN``: a search incumbent retrained on all N and scored on the test set;
  ``retrain_of`` names the search trial whose configuration it retrains.
- ``kind == LEARNED``: a learned-hyperparameter method's run on all N, scored on the test
  set, with its own selection ``objective`` (lower is better).
Compute is charged in ``resource_s``, in the budget's unit (``UNIT_LABELS``): GPU-seconds
(wall seconds x the GPU fraction held) or CPU core-seconds (wall seconds x the cores held);
``cpu_s`` and ``gpu_s`` are both kept beside it.
"""

from __future__ import annotations

# files of a run directory
TRIALS_FILE = "trials.parquet"
REPORTS_FILE = "reports.parquet"
METADATA_FILE = "metadata.json"
SUITE_FILE = "suite.toml"
PLOT_STEM = "tradeoff"
REPORT_FILE = "report.md"
JOURNAL_FILE = "journal.jsonl"  # every harness decision as it happened (bench.records.journal)
LOCK_FILE = ".lock"  # held by the driver running into the directory
RAY_FILE = "ray.json"  # the driver's local Ray: temp dir and process ids, for clean-up

# kinds of run
SEARCH, RETRAIN, LEARNED = "search", "retrain", "learned"
# statuses
OK, FAILED, OVER_BUDGET, PRUNED = "ok", "failed", "over_budget", "pruned"
# a configuration the campaign had already run: answered from that run's result (INFO
# names it: {"repeat_of": trial id}), charged no compute
REPEAT = "repeat"

# the units a budget counts compute in ([budget] unit), as axes and tables name them
UNIT_LABELS = {"gpu": "GPU-seconds", "cpu": "CPU core-seconds"}

# trials.parquet columns
SUITE = "suite"
TASK = "task"
METHOD = "method"  # the suite's label of the method
PLUGIN = "plugin"  # the plugin the label ran (entry-point name); absent in older runs
SEED = "seed"
TRIAL_ID = "trial_id"
KIND = "kind"
STATUS = "status"
CONFIG = "config"  # JSON of the hyperparameters
RETRAIN_OF = "retrain_of"
VAL_NLL = "val_nll"
VAL_ACC = "val_acc"
VAL_CLML = "val_clml"  # conditional log marginal likelihood (CLML records); higher is better
TEST_ACC = "test_acc"
TEST_NLL = "test_nll"
OBJECTIVE = "objective"
STEPS_DONE = "steps_done"
STARTED_S = "started_s"  # seconds since the suite started
ENDED_S = "ended_s"
WALL_S = "wall_s"
RESOURCE_S = "resource_s"  # the compute charged, in the budget's unit: gpu_s or cpu_s
CPU_S = "cpu_s"
GPU_S = "gpu_s"
TRAIN_S = "train_s"
EVAL_S = "eval_s"
OVERHEAD_S = "overhead_s"
NODE = "node"
ERROR = "error"
ERROR_TRACE = "error_trace"  # a failed trial's traceback, as the worker caught it
INFO = "info"  # JSON of method-specific outputs (learned lambda, winning lr, ...)

TRIAL_COLUMNS = (
    SUITE, TASK, METHOD, PLUGIN, SEED, TRIAL_ID, KIND, STATUS, CONFIG, RETRAIN_OF,
    VAL_NLL, VAL_ACC, VAL_CLML, TEST_ACC, TEST_NLL, OBJECTIVE, STEPS_DONE,
    STARTED_S, ENDED_S, WALL_S, RESOURCE_S, CPU_S, GPU_S, TRAIN_S, EVAL_S, OVERHEAD_S,
    NODE, ERROR, ERROR_TRACE, INFO,
)

# what differs between two runs of the same suite and seeds: when and where trials ran,
# and how long they took (in INFO too: its keys ending in "_s")
TIMING_COLUMNS = (STARTED_S, ENDED_S, WALL_S, RESOURCE_S, CPU_S, GPU_S, TRAIN_S, EVAL_S,
                  OVERHEAD_S, NODE)

# reports.parquet columns (one row per evaluation during training)
STEP = "step"
EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
METRICS = "metrics"  # JSON of any other per-epoch values (sigma, lambda, log_marglik, ...)
REPORT_COLUMNS = (SUITE, TASK, METHOD, SEED, TRIAL_ID, STEP, EPOCH, TRAIN_LOSS, VAL_NLL,
                  VAL_ACC, METRICS)
# what a worker measured by an epoch report, kept for a trial stopped there (pruned or
# over budget): seconds in fit so far (training, evaluations, network set-up), and the
# loop's own training and evaluation seconds where fit reports them
FIT_S = "fit_s"
REPORTED = "reported"  # an epoch report's list of the method's own keys (Ray adds its own)

# metadata.json: the label the analysis compares every method with (bench.records.rundir)
REFERENCE = "reference"

# curve table columns (bench.analysis.curves)
COMPUTE_S = "compute_s"
K = "k"
