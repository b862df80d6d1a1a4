"""Pure core: numpy/pandas/scikit-learn functions with no I/O conventions, no TensorFlow and no stages.

BreakHis names, splits, ensemble rules, metrics, stain maths and heatmap scoring live here, so that the
pipeline and the dashboard compute every number with the same code (and tests can check it by hand).
"""
