"""Runs: the MLflow store (client, run creation) and the typed member-run schema."""
