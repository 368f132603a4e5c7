"""A run's records on disk: the tables, the journal, the published record sets and the
recorded learning curves."""
