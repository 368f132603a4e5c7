"""The worker side of a trial: the standard fit, the self-labeling hook, fault injection,
and running one trial from its request to its final result."""
