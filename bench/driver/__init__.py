"""The driver: suites, the campaigns' state, the backends that run their trials (a pool of
Ray actors, Ray Tune, the replay simulator) and the run itself."""
