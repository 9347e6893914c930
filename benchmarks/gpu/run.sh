#!/usr/bin/env bash
# Run on the GPU machine through the device tool, with carry [".whl", ".gpu"] (see prepare.sh):
#   bash benchmarks/gpu/run.sh lora        seed 000's LoRA: baseline, default and the GPU ablations (all
#                                          screens are 1280x800, so packing has no padding to save here)
#   bash benchmarks/gpu/run.sh selective   eval throughput batched vs 1 at a time (pigg bench-eval), then
#                                          seed 002's selection
#   bash benchmarks/gpu/run.sh approaches  seed 003 on one GPU: LoRA vs QLoRA vs full, then the computed
#                                          memory per approach (pigg params --approaches) beside it
#   bash benchmarks/gpu/run.sh engines     the code paths CPU cannot run, on a tiny model in a minute or two:
#                                          FSDP2 and DeepSpeed ZeRO-2/3 (one rank each: wrapping, sharded
#                                          checkpoints, resume, the gathered final model), QLoRA on CUDA,
#                                          model parallel on the visible GPUs; needs deepspeed in .whl
#   bash benchmarks/gpu/run.sh logits      the output layer: seed recipe, default (logits only at trained
#                                          positions), default with full logits, chunked; then the largest
#                                          micro-batch without checkpointing, with and without full logits
#   bash benchmarks/gpu/run.sh text        seed 004: Qwen2.5-7B full fine-tuning on news articles with seed
#                                          004's length spread (mean ~170 tokens, tail to ~450): padded
#                                          micro-batches vs packed rows of 512, flash-attention where installed
#   bash benchmarks/gpu/run.sh serve       issue 17 on a GPU: the embedded demo's run personalized, then
#                                          pigg bench-serve (one at a time vs batched, answers compared);
#                                          and, where vLLM is installed, its server started with the
#                                          users' adapters (pigg serve --engine vllm) and asked once per user
#   bash benchmarks/gpu/run.sh grpo        click-reward RL (train.stage=grpo) on the 8B, LoRA, 2 screenshots x 8
#                                          answers a step, generation by transformers, then by vLLM in the
#                                          training process (colocate) where vllm is installed: answers/s and
#                                          the share of each step spent generating, from pigg's own log lines
# Each call sets up from scratch (a device machine starts bare): Qwen3-VL-8B with random weights built
# from the real config, 1280x800 synthetic screens; reports go to $OUT (8 files at most come back).
# SOURCE, DEVICE, PYTHON, STEPS, WARMUP, REPEAT, the *_PATHS variables and EXTRA (more config overrides)
# change the defaults; a dry run on CPU uses them (docs/benchmarks.md).
set -euo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/pigg_gpu_out}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
python=${PYTHON:-python3}
if [ -d .whl ]; then
    $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD/src
else
    export PYTHONPATH=$PWD/src
fi
pigg() { $python -m pigg.cli "$@"; }
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
    $python -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
    $python -c "import importlib.metadata as m; print('liger-kernel', m.version('liger-kernel'))" 2>/dev/null || echo "no liger-kernel"
} | tee "$OUT/machine.txt"

source_model=${SOURCE:-.gpu/qwen3-vl-8b-instruct}
model=/tmp/pigg_gpu/$(basename "$source_model")-random data=/tmp/pigg_gpu/gui-1280x800
# the 8B and its screens, for the modes that train it (engines and text build their own models)
case "${1:-lora}" in lora|selective|approaches|logits|grpo)
    [ -d "$model" ] || pigg model random "$source_model" "$model" --device "${DEVICE:-cuda}"
    [ -d "$data" ] || pigg data synth "$data" --users 4 --per-user 40 --screen 1280x800
esac
on_data=(model.name=$model data.path=$data data.train_users=all data.test_users=null train.eval=false ${EXTRA:-})
steps=(--warmup "${WARMUP:-2}" --steps "${STEPS:-5}" --repeat "${REPEAT:-2}")

case "${1:-lora}" in
lora)
    pigg bench global_lora "${on_data[@]}" "${steps[@]}" --out "$OUT/lora" \
        --paths "${LORA_PATHS:-baseline,default,default+liger,default-checkpointing,default-checkpointing-half-micro-batch}"
    ;;
selective)
    # eval first: it takes a minute, and the training bench may run into the call's time limit
    pigg bench-eval --model "$model" --data "$data" --users 1 --max-samples "${EVAL_SAMPLES:-32}" \
        --max-new-tokens 16 --batch-sizes 1,4,16 --out "$OUT/eval"
    pigg bench seed002_last6_lora "${on_data[@]}" train.deepspeed=null "${steps[@]}" \
        --out "$OUT/selective" --paths "${SELECTIVE_PATHS:-baseline,default,default+liger}"
    ;;
approaches)
    pigg params seed003/lora model.name="$model" --approaches | tee "$OUT/approaches_memory.md"
    pigg bench global_lora "${on_data[@]}" "${steps[@]}" --out "$OUT/approaches" \
        --paths "${APPROACH_PATHS:-baseline,default,approach-qlora,approach-full}"
    ;;
engines)
    tiny=/tmp/pigg_gpu/tiny data=/tmp/pigg_gpu/tiny-data
    [ -d "$tiny" ] || pigg model tiny qwen3-vl "$tiny"
    [ -d "$data" ] || pigg data synth "$data" --users 2 --per-user 16 >/dev/null
    # one approach: 4 steps saving every 2, resumed to 6, then the final folder evaluated; the launch is
    # --nproc 1 (torchrun, one rank) except for model parallel, which is one plain process
    engine() {
        local name=$1 launch=$2 out=/tmp/pigg_gpu/engines/$1
        shift 2
        local args=(global_lora model.name="$tiny" data.path="$data" data.train_users=all
            data.max_length=512 model.max_pixels=65536 train.output_dir="$out" train.log_dir="$OUT/engine_logs"
            train.save_steps=2 train.logging_steps=1 train.learning_rate=1e-3 train.report_to=[] "$@")
        echo "=== $name: $*"
        if pigg train "${args[@]}" train.max_steps=4 $launch &&
            pigg train "${args[@]}" train.max_steps=6 --resume $launch &&
            pigg eval --model "$out" --data "$data" --users 1-2 --max-samples 8 --out "$out/eval" >/dev/null; then
            $python -c "import json; s = json.load(open('$out/pigg_run.json')); print(s['status'], s['steps'], 'steps,', s['world_size'], 'rank(s), loss', s['last_loss'])"
            echo "=== $name: OK"
        else
            echo "=== $name: FAILED"
        fi
    }
    {
        engine fsdp "--nproc 1" train.method=full train.parallel=fsdp
        engine zero2 "--nproc 1" train.method=full train.parallel=deepspeed train.deepspeed=zero2
        engine zero3 "--nproc 1" train.method=full train.parallel=deepspeed train.deepspeed=zero3
        engine qlora "--nproc 1" model.quantization=nf4
        engine liger "--nproc 1" train.liger_kernel=true
        engine model-parallel "" train.method=full train.parallel=model
    } 2>&1 | tee "$OUT/engines.txt"
    grep -E "^=== .*: (OK|FAILED)$" "$OUT/engines.txt"
    ;;
logits)
    pigg bench global_lora "${on_data[@]}" "${steps[@]}" --out "$OUT/logits" \
        --paths "${LOGITS_PATHS:-baseline,default,default-full-logits,default+chunked-loss}"
    # each micro-batch in a process of its own: an out-of-memory ends that one, and the next logits mode
    # starts over
    for logits in labelled all; do
        for micro in ${MICRO_BATCHES:-8 16 32 64}; do
            echo "## train.logits=$logits, micro-batch $micro, no checkpointing" >>"$OUT/micro_batch.md"
            if ! pigg plan global_lora "${on_data[@]}" train.batch_size="$micro" train.grad_accum=1 \
                train.gradient_checkpointing=false train.logits="$logits" --warmup 1 --steps 2 \
                >>"$OUT/micro_batch.md" 2>>"$OUT/micro_batch_errors.txt"; then
                echo "does not fit (see micro_batch_errors.txt)" >>"$OUT/micro_batch.md"
                break
            fi
        done
    done
    ;;
text)
    text_model=/tmp/pigg_gpu/qwen2.5-7b-instruct-random news=/tmp/pigg_gpu/news.jsonl
    [ -d "$text_model" ] || pigg model random "${TEXT_SOURCE:-.gpu/qwen2.5-7b-instruct}" "$text_model" --device "${DEVICE:-cuda}"
    [ -f "$news" ] || pigg data synth-news "$news" --count 2000
    pigg bench seed004_agnews_full model.name="$text_model" data.path="$news" data.eval_path=null \
        ${EXTRA:-} "${steps[@]}" --out "$OUT/text" --paths "${TEXT_PATHS:-baseline,default,default+packing}"
    ;;
grpo)
    # transformers generation first (always runs), then vLLM colocate where vllm imports: a vLLM that fails
    # to start (versions) costs its own figures only
    grpo_run() {
        local generation=$1
        pigg train global_grpo "${on_data[@]}" model.init_from=null rl.use_vllm=$2 train.max_steps="${STEPS:-5}" \
            train.save_steps=1000 train.logging_steps=1 train.output_dir=/tmp/pigg_gpu/grpo_$generation \
            train.log_dir=/tmp/pigg_gpu/logs train.report_to=[] | tee "$OUT/grpo_$generation.txt" || return 1
        # answers/s and generation share of the steps after the first
        grep -E "^step [0-9]+/" "$OUT/grpo_$generation.txt" | tail -n +2 |
            sed -E 's/.*generating ([0-9]+)%.* ([0-9.]+) samples\/s.*/\1 \2/' |
            awk -v g="$generation" '{s+=$2; p+=$1; n++} END {if (n) printf "%s: mean over %d steps: %.2f answers/s, %.0f%% generating\n", g, n, s/n, p/n}' |
            tee -a "$OUT/grpo.txt"
    }
    grpo_run transformers false || echo "transformers generation: the run failed" | tee -a "$OUT/grpo.txt"
    if $python -c "import vllm" 2>/dev/null; then
        grpo_run vllm true || echo "vLLM generation: the run failed (log in grpo_vllm.txt)" | tee -a "$OUT/grpo.txt"
    else
        echo "vLLM generation: vllm is not installed on this machine" | tee -a "$OUT/grpo.txt"
    fi
    ;;
serve)
    demo=/tmp/pigg_gpu/demo
    [ -f "$demo/demo_summary.json" ] || pigg demo --out "$demo" | tail -3
    pigg bench-serve "$demo/runs/global" --requests "${SERVE_REQUESTS:-400}" --concurrency "${SERVE_CLIENTS:-32}" \
        --max-batch "${SERVE_BATCH:-32}" --out "$OUT/serve_bench.json" | tee "$OUT/serve.txt"
    pigg serve "$demo/runs/global" --engine vllm --port 8011 --dry-run | tee -a "$OUT/serve.txt"
    if $python -c "import vllm" 2>/dev/null; then
        (timeout 300 $python -m pigg.cli serve "$demo/runs/global" --engine vllm --port 8011 >"$OUT/vllm.txt" 2>&1 &)
        for _ in $(seq 150); do curl -sf localhost:8011/v1/models >/dev/null && break; sleep 2; done
        curl -s localhost:8011/v1/models | tee -a "$OUT/serve.txt"
    else
        echo "vllm is not installed on this machine: the command above was not run" | tee -a "$OUT/serve.txt"
    fi
    ;;
*)
    echo "usage: run.sh lora|selective|approaches|logits|engines|text|serve|grpo" >&2
    exit 2
    ;;
esac
