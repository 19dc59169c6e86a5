"""Plug k-means TPE into other optimisation libraries (optuna, hyperopt)."""
