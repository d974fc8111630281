"""fxml: config-driven experiments for the Numerai tournament."""

import os

# OpenMP threads (LightGBM, XGBoost, torch) spin while they wait by default; on a shared or busy
# machine that made a 2-second LightGBM fit take 20 seconds. Set before those libraries load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Polars' allocator (jemalloc) keeps freed pages for seconds before handing them back; Polars only
# reads ids, eras and targets here, so nothing is gained by keeping them, and at the start of
# training they were 39 MiB of the run's resident memory (1/16 of v5.2). Read when Polars loads.
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")

__version__ = "0.1.0"
