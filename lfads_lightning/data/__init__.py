"""Data: the session HDF5 format, its validation, the DataModule, synthetic data, NLB/NWB import."""
