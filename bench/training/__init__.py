"""The one training loop (optimiser, schedule, clipping, hooks, evaluation) and the metrics
it reports. Below the zoo: pretraining a backbone runs on it too."""
