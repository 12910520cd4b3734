"""The memorization lab: synthetic private records and planting them into a model at known exposures."""
