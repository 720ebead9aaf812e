"""Datasets: the bundled demo data and loaders for the benchmark collections."""
