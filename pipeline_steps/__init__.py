"""One module per DVC stage: `run(cfg, inputs..., out_dir, tracker) -> metrics` plus a CLI shim."""
