"""A run: building a model, the run folder, checkpoints and resume, the run driver."""
