#!/usr/bin/env bash
# Build llama.cpp's shared library and llama-diffusion-cli from the llama-cpp-python sdist on PyPI, offline after
# the download, into a cache folder outside git. Used by tests/test_gguf_llama_cpp.py and bench/bench_llama_cpp.py
# (they skip when the build is absent). CI does not run this: it takes about 14 minutes on 2 cores.
#
#   bash bench/build_llama_cpp.sh [CACHE_DIR]      # default: $ILLADA_LLAMA_CPP_DIR or ~/.cache/illada/llama.cpp
#   export ILLADA_LLAMA_CPP_DIR=CACHE_DIR          # then the parity test and the benchmark find the build
#
# Needs cmake, ninja, a C/C++ compiler, and pip. The version is pinned to the llama-cpp-python pin in
# requirements-test.txt (its ctypes bindings load the library through LLAMA_CPP_LIB_PATH).
set -euo pipefail
VERSION=0.3.36
CACHE="${1:-${ILLADA_LLAMA_CPP_DIR:-$HOME/.cache/illada/llama.cpp}}"
mkdir -p "$CACHE"
cd "$CACHE"
for tool in cmake ninja cc c++; do
  command -v "$tool" >/dev/null || { echo "build_llama_cpp.sh: '$tool' not found; install it (apt-get install cmake ninja-build g++)" >&2; exit 1; }
done
SDIST="llama_cpp_python-$VERSION.tar.gz"
[ -f "$SDIST" ] || python -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d .
[ -d "llama_cpp_python-$VERSION" ] || tar xzf "$SDIST"
SRC="$CACHE/llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S "$SRC" -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON \
  -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_EXAMPLES=ON
cmake --build build --target llama llama-diffusion-cli -j "$(nproc)"
echo "$VERSION" > build/ILLADA_LLAMA_CPP_VERSION
echo "built: $CACHE/build/bin/llama-diffusion-cli and $(ls "$CACHE"/build/bin/libllama.so 2>/dev/null || find "$CACHE/build" -name 'libllama.so' | head -1)"
