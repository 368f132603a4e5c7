"""The worker side of a trial: the one training loop with its hooks, the standard fit, evaluation, and running one trial."""
