"""TrainingModel, methods, the fit loop, checkpoints and distributed launch."""
