"""Benchmarks of CITES Vision against the usual alternatives and the machine's limits.

``python -m bench.run_all`` runs everything and regenerates ``docs/benchmarks.md``. Each module
measures one thing and returns plain dictionaries; :mod:`bench.report` turns them into tables and
plots. Nothing here is imported by the product.
"""
