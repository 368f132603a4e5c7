"""Reading records: anytime curves, statistics, plots, reports, comparisons across runs and
the status of a live run."""
