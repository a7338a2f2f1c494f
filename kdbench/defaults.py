"""Every default that is not a study key, with its unit: run-time settings, the store's timings, the report's
thresholds. The study file's own keys and their defaults are the schema in :mod:`kdbench.config`, which imports
from here what it needs; every other layer imports its defaults from here. Nothing here imports torch.
"""

from __future__ import annotations

__all__ = [
    "CALIBRATION_BINS",
    "CROP_PAD",
    "DEFAULT_STORAGE",
    "FUSE_AUTO_MAX",
    "FUSE_MEMORY_SHARE",
    "GRID_REPLICATES",
    "HEARTBEAT_S",
    "IMAGEFOLDER_SIZE",
    "IMAGEFOLDER_TEST_FRACTION",
    "IMPORTANCE_MIN_TRIALS",
    "IN_MEMORY_DATASET",
    "MAX_BATCH",
    "MAX_EPOCHS",
    "MAX_STEPS",
    "MAX_VISITS",
    "MCNEMAR_EXACT_BELOW",
    "POLL_S",
    "POOL_TAU2_METHOD",
    "PROXY_CONNECT_S",
    "PROXY_THREADS",
    "PRUNE_RHO_MIN",
    "RANGE_TRIALS",
    "RAY_CONNECT_S",
    "SAMPLER_STARTUP_TRIALS",
    "SEARCH_SEED_OFFSET",
    "STALE_AFTER_S",
    "TEACHER_FLOOR_SHARE",
]

# --- the store and the workers
DEFAULT_STORAGE = "sqlite:///kdbench.db"  # SQLAlchemy URL of the results database (--storage)
STALE_AFTER_S = 120.0  # seconds without a heartbeat after which another worker takes a running visit over
HEARTBEAT_S = 15.0  # seconds between heartbeats of a running visit
POLL_S = 2.0  # seconds between looks at the store while waiting for other workers
PROXY_THREADS = 10  # Optuna calls the storage proxy serves at once, hence the most database connections it opens
PROXY_CONNECT_S = 30.0  # seconds a worker waits for the Optuna storage proxy (--optuna-proxy) to answer
RAY_CONNECT_S = 10.0  # seconds the sweep waits for launcher.ray_address to accept a connection before refusing it
IN_MEMORY_DATASET = "in-memory"  # data.dataset of a study whose data were given to kdbench.sweep (data=)

# --- the search (defaults of study keys left unset, and the limits the schema enforces)
RANGE_TRIALS = 20  # KD trials of a range search when search.trials is unset (the CE baseline gets as many)
GRID_REPLICATES = 3  # search seeds per cell of a grid search when search.replicates is unset
SEARCH_SEED_OFFSET = 1000  # replicate i of the search trains on seed + SEARCH_SEED_OFFSET + i (finalists: seed + 1 + i)
LR_END_SHARE = 0.1  # a range search's best lr in this outer share of its lr range (log range: of its log) is at an end
SAMPLER_STARTUP_TRIALS = 5  # random trials before TPE models, and complete trials before the median pruner acts
MAX_VISITS = 100_000  # default search.max_visits: visits (training runs) a study may plan; no shipped study comes
# near it (the largest plans a few hundred), a typo such as 3000 temperatures does
MAX_EPOCHS = 10_000  # a recipe's epochs above this are refused as a typo (1e12 would train forever)
MAX_STEPS = 100_000_000  # likewise for steps
MAX_BATCH = 65_536  # likewise for batch_size (samples per step)
FUSE_AUTO_MAX = 64  # search.fuse: auto on CUDA fuses up to this many students (one seed's visits at most)
FUSE_MEMORY_SHARE = 0.5  # search.fuse: auto: fused students' estimated memory stays under this share of free GPU memory
TEACHER_FLOOR_SHARE = 0.5  # default teacher.min_accuracy: chance + this share of the rest (a fraction)

# --- data
IMAGEFOLDER_SIZE = 32  # pixels: image folders are resized to this square when data.image_size is unset
IMAGEFOLDER_TEST_FRACTION = 0.2  # of an image folder's train/ images, carved out as its test set when it has no test/
CROP_PAD = 4  # pixels of zero padding on each side before a random crop (data.augment: crop)

# --- the report
PRUNE_RHO_MIN = 0.8  # Spearman rho of an epoch's val accuracy with the final one below which the report warns
# that a pruner acting at that epoch may stop trials that would have ranked high (rho^2 = 0.64: a third of the
# final ranking's variance is not yet visible)
ANOVA_MIN_SEEDS = 4  # seeds below which the report runs no T × α RM-ANOVA: its p-values rest on sphericity,
# which with fewer seeds cannot be checked (the level effects and their CIs are shown instead); from 4 seeds on its
# p-values are Greenhouse–Geisser corrected
POOL_TAU2_METHOD = "dl"  # report --pool: the between-study variance estimator (statsmodels' combine_effects
# method_re): DerSimonian–Laird, the one-step moment estimate most meta-analyses report; "pm" is Paule–Mandel
CALIBRATION_BINS = 15  # equal-width confidence bins of the report's ECE and reliability diagram (Guo et al. 2017)
# complete KD trials below which a report shows no parameter importances. PED-ANOVA (Optuna's default
# evaluator, target_quantile 0.1) compares the density of the top 10 % of trials with that of all trials;
# under 50 trials that top group has fewer than 5 members and its importances are mostly noise.
IMPORTANCE_MIN_TRIALS = 50
MCNEMAR_EXACT_BELOW = 25  # discordant test images (CE right/KD wrong + the reverse) below which McNemar's test
# is the exact binomial one; from 25 on the chi-square approximation (with continuity correction) is close
