"""The baseline of bench_scale.py: what Numerai's example scripts do, with fxml's default LightGBM.

pandas reads the needed columns of train and validation, ``LGBMRegressor`` fits on train and
predicts validation, and the mean per-era correlation of ranks is printed.

    python scripts/plain_lgbm.py <release folder> <feature set> [<boosting rounds, default 300>]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightgbm as lgb
import pandas as pd


def main(folder: Path, feature_set: str, rounds: int) -> None:
    features = json.loads((folder / "features.json").read_text())["feature_sets"][feature_set]
    train = pd.read_parquet(folder / "train.parquet", columns=["era", *features, "target"])
    model = lgb.LGBMRegressor(n_estimators=rounds, learning_rate=0.05, max_depth=5, num_leaves=31,
                              colsample_bytree=0.5, subsample=1.0, min_child_samples=20, reg_lambda=0.0,
                              random_state=42, deterministic=True, verbosity=-1)
    model.fit(train[features], train["target"])
    del train
    validation = pd.read_parquet(folder / "validation.parquet", columns=["era", *features, "target"])
    validation["prediction"] = model.predict(validation[features])
    scored = validation.dropna(subset=["target"])
    per_era = scored.groupby("era").apply(
        lambda era: era["prediction"].rank(pct=True).corr(era["target"]), include_groups=False)
    print(f"validation rank correlation, mean over {len(per_era)} eras: {per_era.mean():.4f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 300)
