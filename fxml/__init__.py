"""fxml: config-driven experiments for the Numerai tournament."""

import os

# OpenMP threads (LightGBM, XGBoost, torch) spin while they wait by default; on a shared or busy
# machine that made a 2-second LightGBM fit take 20 seconds. Set before those libraries load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
