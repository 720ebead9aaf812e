"""Datasets: the bundled demo data.

The loaders of the benchmark collections (UCI-121, Grinsztajn) are not part of the installed package:
they live in ``benchmarks/datasets/`` of the checkout.
"""
