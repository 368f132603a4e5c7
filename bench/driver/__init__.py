"""The driver: suites, the campaigns' state, the backends that run their trials (Ray Tune,
the replay simulator) and the run itself."""
