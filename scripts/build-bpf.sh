#!/usr/bin/env bash
# Compile the tc datapath to dist/bpf/endpoint.o. Idempotent and fast: does nothing when the object
# is newer than every source under bpf/ and this script (FORCE=1 rebuilds anyway). Writes to a
# temporary file and renames, so a failed or concurrent build never leaves a truncated object.
# BPF_OUT + BPF_CFLAGS build measurement variants (e.g. -DMBR_CT_LRU) elsewhere.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/bpf/endpoint.c"
out="${BPF_OUT:-$root/dist/bpf/endpoint.o}"
clang="${CLANG:-clang}"

if [[ -z "${FORCE:-}" && -f "$out" ]] &&
  [[ -z "$(find "$root/bpf" "${BASH_SOURCE[0]}" \( -name '*.[ch]' -o -name '*.sh' \) -newer "$out" -print -quit)" ]]; then
  exit 0
fi

mkdir -p "$(dirname "$out")"
# asm/ headers (pulled in by linux/*.h) live in the multiarch include dir on Debian/Ubuntu.
multiarch="/usr/include/$(uname -m)-linux-gnu"
tmp="$(mktemp "$out.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
"$clang" -O2 -g -target bpf -Wall -Werror ${BPF_CFLAGS:-} \
  -I "$root/bpf" ${multiarch:+-I "$multiarch"} \
  -c "$src" -o "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
echo "built $out"
