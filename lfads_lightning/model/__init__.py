"""Model: the LFADS network (encoders, controller, generator), priors, reconstructions, and the
LightningModule that trains it. Imports no MLflow, Trainer, worker or PBT code."""
