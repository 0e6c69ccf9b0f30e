"""Analysis of fedspine-ray run directories: tables (pandas) and plots (matplotlib).

Importable from the repo root (``python -m analysis.report RUN_DIR ...``); not part of the installed package,
so the runtime does not depend on matplotlib.
"""
