"""Tooling around the product, not part of it: benchmarks (``make bench``), the GPU check (``make gpu-check``),
screenshots (``make screenshots``) and the live-dashboard/browser harness the browser tests share.

Tools may import the product (``pipeline``, ``dashboard``); the synthetic experiments that tests and benchmarks
share live here too (``tools/fixtures.py``), so no tool reaches into ``tests/``. The product
never imports ``tools`` or ``tests`` (tests/test_layers.py). Run from the checkout: ``python -m tools.bench``.
"""
