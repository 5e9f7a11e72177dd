#!/bin/sh
# Rebuilds digest.wasm from digest.c (needs clang and lld: apt-get install clang lld).
# CI does not run this; the built digest.wasm is committed beside its source.
set -eu
cd "$(dirname "$0")"
clang --target=wasm32 -O2 -nostdlib -ffreestanding \
  -Wl,--no-entry -Wl,--strip-all \
  -o digest.wasm digest.c
ls -l digest.wasm
