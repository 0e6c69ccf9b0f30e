"""What the launching process does before and around a run, without torch: it stays a small process.

Role: :mod:`.preflight` (a config's files, sources, device classes and packages, checked before Ray
starts), :mod:`.overrides` (``--set``), :mod:`.ray_session` (start or join Ray, the workers' environment),
:mod:`.files` (the one atomic writer), :mod:`.results` (the run directory's Parquet/JSON/YAML files),
:mod:`.checkpoint_files` (checkpoint bytes on disk, ``--resume``), :mod:`.sweep_spec` (sweep files) and
:mod:`.tune` (running a sweep with Ray Tune; its trainable calls :func:`fedspine_ray.runner.run_experiment`).
May import: config, and the torch-free modules of data (sources), devices (profiles, population) and
modeling (paths); Ray only inside functions, once inputs are known good. Never torch, models or the runtime.
"""
