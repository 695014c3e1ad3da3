"""Worker: the one job every launcher runs for an MLflow run (fit, PBT member, final sampling)."""
