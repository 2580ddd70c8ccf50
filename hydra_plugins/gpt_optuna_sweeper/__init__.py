"""The project's Optuna sweeper for Hydra (a Hydra plugin: Hydra finds it in the hydra_plugins namespace)."""
