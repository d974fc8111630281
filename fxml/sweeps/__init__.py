"""Sweeps: Hydra multirun and Optuna searches over the same configs, grouped in MLflow."""
