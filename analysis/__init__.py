"""Analysis of fedspine-ray run directories: tables (pandas), seed statistics (scipy) and plots (matplotlib).

An installed package of its own next to ``fedspine_ray`` (``pip install fedspine-ray`` installs both), so
``fedspine report RUN_DIR ...`` and ``python -m analysis.report`` work outside a checkout. The ``fedspine``
command imports it only when ``report`` runs, and the runtime never does. Plots need matplotlib, the
``plots`` extra (``pip install "fedspine-ray[plots]"``); without it a report can still be written with
``--no-plots``. May import: pandas, scipy, pyyaml, matplotlib (``plots`` only); not fedspine_ray, so the
two stay separable (it reads the files runs write, docs/results.md).
"""
