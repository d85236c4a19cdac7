"""The experiment and benchmark harnesses behind ``amsmooth bench`` and ``amsmooth lab table`` (issue 25, item 3).

They are installed beside the library (same distribution, same ``pip install``) but are not part of it:

- ``bench``: the SD-1.5 overhead benchmark (Table 2: random-weight SD-1.5 timed component by component, projected
  to 512 px / 50 steps), the SAFREE text-stage timing, the text-stage profile and the batching speed-up;
- ``family_bench``: the same overhead benchmark for SDXL, SD3 and Flux (real widths, depth extrapolated).

Each harness calls the library's public API (``amsmooth.smoothing``, ``amsmooth.pipelines``, ``amsmooth.models``,
``amsmooth.baselines``, …) the way a user's script would. The dependency runs one way: the command-line layer
(``amsmooth.cli``), ``benchmarks/`` and the tests import these modules; the library (``amsmooth`` outside
``amsmooth.cli``) never imports ``amsmooth_experiments`` (tests/test_imports.py checks it).
"""
