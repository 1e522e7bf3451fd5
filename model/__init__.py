"""Plain PyTorch: configs and named sizes, the Transformer, the MDM and ARM objectives."""
