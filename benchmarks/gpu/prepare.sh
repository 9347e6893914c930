#!/usr/bin/env bash
# Run here, on the machine without a GPU, in the repository, before a device call (docs/benchmarks.md).
# Puts what benchmarks/gpu/run.sh needs and the GPU image lacks into two git-ignored folders that the
# device call carries:
#   .whl/  wheels: pydantic (missing there), typer, liger-kernel, bitsandbytes, DeepSpeed, TRL, and pigg's
#          tested transformers and peft versions (the image has other ones)
#   .gpu/  the Qwen3-VL-8B and Qwen2.5-7B configs and processors from ../shared/assets (no weights;
#          ../shared does not travel with the working tree)
set -euo pipefail
cd "$(dirname "$0")/../.."
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for folder in /.whl/ /.gpu/; do
    grep -qx "$folder" "$exclude" 2>/dev/null || echo "$folder" >>"$exclude"
done
python=${PYTHON:-.venv/bin/python}
pinned() { grep -iE "^($1)==" requirements.txt; }
wheels=(
    $(pinned 'pydantic|pydantic_core|annotated-types|typing-inspection|typing_extensions')
    $(pinned 'typer|click|annotated-doc|rich|transformers|tokenizers|peft|regex')
    liger-kernel==0.8.5
    $(pinned 'bitsandbytes')
    $(pinned 'fastapi|starlette|uvicorn|httpx|httpcore|h11|anyio|certifi|idna|opentelemetry-api')
    $(pinned 'trl')
)
rm -rf .whl && mkdir .whl
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 \
    -d .whl "${wheels[@]}"
# bitsandbytes ships one library per CUDA version (43 MB): the image is CUDA 13, so only cuda13x and the CPU
# library stay, or the call would exceed the device tool's 64 MiB
"$python" - .whl/bitsandbytes-*.whl <<'PY'
import re, sys, zipfile
path = sys.argv[1]
with zipfile.ZipFile(path) as old:
    items = [(i, old.read(i)) for i in old.infolist()]
unused = re.compile(r"libbitsandbytes_cuda(?!13)\d+")
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as new:
    for info, data in items:
        if unused.search(info.filename):
            continue
        if info.filename.endswith("RECORD"):
            data = b"".join(l for l in data.splitlines(True) if not unused.search(l.decode()))
        new.writestr(info, data)
PY
# DeepSpeed (run.sh engines): PyPI has its source only; built here into a pure-Python wheel (its CUDA ops
# compile on first use there: the image has ninja and the CUDA toolkit), with hjson, which the image lacks
"$python" -m pip wheel -q --no-deps --no-build-isolation -w .whl deepspeed==0.19.8 hjson==3.1.0 ||
    echo "no DeepSpeed wheel: run.sh engines will report zero2 and zero3 as FAILED" >&2
assets=${ASSETS:-../shared/assets}
rm -rf .gpu && mkdir .gpu
cp -r "$assets/qwen3-vl-8b-instruct" .gpu/
rm -f .gpu/qwen3-vl-8b-instruct/model.safetensors.index.json  # names weight files that are not there
cp -r "$assets/qwen2.5-7b-instruct" .gpu/  # run.sh text: seed 004's model
du -sh .whl .gpu
