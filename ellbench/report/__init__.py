"""Reports from the store: the long format every number is recomputed in (results.py), pivot and Markdown tables
(tables.py), the reference tables (reference.py), paired comparisons (compare.py), plots (plots.py), and
`ellbench report`'s entry point that writes them all (build.py).
"""
