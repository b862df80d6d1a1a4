"""The artifact layer: where every file of an experiment lives (the catalog), how it is written (atomic)
and read (one handle), and the shared readers of the parquet contract. Used by the stages and the dashboard.
"""
