#!/usr/bin/env bash
# shellcheck disable=SC2317  # the case functions are called indirectly, through start_case's "$@"
# Proves ringnet can be consumed the ways users do, and that it is ODR-safe:
#   1. meson subproject (subprojects/ringnet + dependency('ringnet') via override_dependency)
#   2. installed (meson install --prefix) + pkg-config, plain g++
#   3. vendored copy with a renamed namespace (-DRINGNET_NAMESPACE=myproxy_net), checked with nm
#   4. two vendored copies (liba_net, libb_net) in one binary
#   5. two-TU ODR: three TUs with the default namespace sharing templates and inline thread_locals
#      (g++: -flto -Wodr -Werror, so the LTO linker diagnoses ODR violations)
#   6. CMake: find_package(ringnet 0.1) against the installed prefix, and add_subdirectory of the
#      source tree, each linking the ringnet::ringnet target alone (when cmake is installed)
#   7. compile time of the umbrella header (informational)
# Cases 3-5 run with g++ and, when present, clang++-16. Every consumer does a loopback round trip
# (tests/consume/roundtrip.hpp) and exits non-zero unless the bytes arrive.
#
# Usage: tests/consume/run.sh [REPO_ROOT]   (default: the repository this script is in)
# Prints one line per case; exits 1 if any case failed, 77 (meson: skipped) if io_uring is
# unavailable everywhere, else 0. Works in temp dirs it creates and removes; never writes to the
# repository. RINGNET_CONSUME_KEEP=1 keeps the temp dir for inspection.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "${1:-$here/../..}" && pwd)
[ -f "$repo/include/ringnet/ringnet.hpp" ] || { echo "run.sh: $repo is not a ringnet checkout" >&2; exit 1; }

# Hermetic: flags from a CI job (sanitizers, a compiler choice) must not leak into the consumers.
unset CC CXX CFLAGS CXXFLAGS CPPFLAGS LDFLAGS PKG_CONFIG_PATH MESON_BUILD_ROOT MESON_SOURCE_ROOT

work=$(mktemp -d "${TMPDIR:-/tmp}/ringnet-consume.XXXXXX")
cleanup() {
  if [ "${RINGNET_CONSUME_KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

gxx=$(command -v g++ || true)
clangxx=$(command -v clang++-16 || true)
uring_libs=$(pkg-config --libs liburing 2>/dev/null || echo -luring)
warn=(-Wall -Wextra -Wpedantic -Werror)
std=(-std=c++20 -O2)
run_timeout=60

# ---- helpers (they run inside a case's subshell, under set -e) -----------------------------------

note() { echo "$*" >>"$work/$case_key.note"; }
die() { echo "error: $*" >&2; exit 1; }

# run_bin BINARY: runs a consumer; 77 (io_uring refused) ends the case as skipped.
run_bin() {
  local rc=0
  timeout "$run_timeout" "$1" || rc=$?
  [ "$rc" -eq 77 ] && exit 77
  [ "$rc" -eq 0 ] || die "$1 exited with $rc"
}

# vendor_copy DIR: a consumer's private copy of the headers in DIR/third_party/ringnet.
vendor_copy() {
  mkdir -p "$1/third_party"
  cp -R "$repo/include/ringnet" "$1/third_party/ringnet"
}

# no_default_namespace BINARY: fails if any symbol still mentions ringnet (the default namespace).
no_default_namespace() {
  local leaked
  leaked=$(nm -C "$1" | grep -F 'ringnet' || true)
  [ -z "$leaked" ] || die "symbols outside the renamed namespace in $1:"$'\n'"$(head -20 <<<"$leaked")"
}

# count_ns BINARY NS: number of symbols in NS::vMAJOR_MINOR:: (the inline ABI namespace).
count_ns() {
  nm -C "$1" | grep -cE "(^|[^[:alnum:]_])$2::v[0-9]+_[0-9]+::" || true
}

compiler_tag() { basename "$1"; }

# ---- 1. meson subproject --------------------------------------------------------------------------
case_subproject() {
  local d="$work/subproject"
  mkdir -p "$d/subprojects"
  cp "$here/subproject/meson.build" "$here/subproject/main.cpp" "$here/roundtrip.hpp" "$d/"
  ln -s "$repo" "$d/subprojects/ringnet"
  CXX="$gxx" CC=gcc meson setup "$d/build" "$d" --force-fallback-for=ringnet
  ninja -C "$d/build"
  ( cd "$d/build"
    meson introspect --projectinfo >projectinfo.json
    meson introspect --targets >targets.json
    meson introspect --tests >tests.json
    meson introspect --buildoptions >options.json
    meson introspect --installed >installed.json )
  # ringnet was taken as the subproject, and none of its tests, benchmarks or examples exist.
  python3 - "$d/build" <<'EOF'
import json, sys
b = sys.argv[1]
info = json.load(open(f"{b}/projectinfo.json"))
subs = [s["name"] for s in info.get("subprojects", [])]
assert subs == ["ringnet"], f"subprojects: {subs}"
targets = [t["name"] for t in json.load(open(f"{b}/targets.json"))]
assert targets == ["consumer"], f"targets beyond the consumer: {targets}"
tests = [t["name"] for t in json.load(open(f"{b}/tests.json"))]
assert tests == [], f"ringnet tests registered in the consumer: {tests}"
installed = json.load(open(f"{b}/installed.json"))
assert not installed, f"a subproject ringnet installs into the consumer's prefix: {installed}"
opts = {o["name"]: o["value"] for o in json.load(open(f"{b}/options.json"))
        if o.get("subproject") == "ringnet" or o["name"].startswith("ringnet:")}
print("ringnet options seen by the consumer:", opts)
EOF
  run_bin "$d/build/consumer"
  note "only target 'consumer': no ringnet tests/benchmarks/examples configured, nothing installed"
}

# ---- 2. installed + pkg-config ----------------------------------------------------------------------
case_pkgconfig() {
  local d="$work/pkgconfig" prefix="$work/pkgconfig/prefix"
  mkdir -p "$d"
  CXX="$gxx" CC=gcc meson setup "$d/build" "$repo" --prefix "$prefix" \
    -Dtests=disabled -Dbenchmarks=disabled -Dexamples=false
  meson install -C "$d/build"
  local pc
  pc=$(find "$prefix" -name ringnet.pc -print -quit)
  [ -n "$pc" ] || die "no ringnet.pc installed under $prefix"
  # Exactly the headers, the .pc files (ringnet-resolve.pc when c-ares was found) and the CMake
  # package: nothing else is installed.
  local extra
  extra=$(cd "$prefix" && find . -type f ! -path './include/ringnet/*' ! -name ringnet.pc \
    ! -name ringnet-resolve.pc \
    ! -path './share/cmake/ringnet/ringnet-config.cmake' \
    ! -path './share/cmake/ringnet/ringnet-config-version.cmake')
  [ -z "$extra" ] || die "unexpected installed files: $extra"
  diff <(cd "$repo/include" && find ringnet -type f | sort) \
       <(cd "$prefix/include" && find ringnet -type f | sort) || die "installed header set differs"
  export PKG_CONFIG_PATH
  PKG_CONFIG_PATH=$(dirname "$pc")
  local cflags libs version
  cflags=$(pkg-config --cflags ringnet)
  libs=$(pkg-config --libs ringnet)
  version=$(pkg-config --modversion ringnet)
  echo "pkg-config: version $version; cflags: $cflags; libs: $libs"
  [[ " $cflags " == *" -I$prefix/include "* ]] || die "cflags do not point into the prefix: $cflags"
  [[ " $libs " == *" -luring "* ]] || die "libs lack liburing: $libs"
  cp "$here/pkgconfig/main.cpp" "$here/roundtrip.hpp" "$d/"
  # shellcheck disable=SC2086  # pkg-config output is meant to be word-split
  ( cd "$d" && "$gxx" $cflags "${warn[@]}" -O2 -DCONSUME_PC_VERSION="\"$version\"" main.cpp \
      -o consumer $libs )
  run_bin "$d/consumer"
  note "ringnet.pc $version, ${pc#"$prefix"/}"
}

# ---- 6. CMake ----------------------------------------------------------------------------------------------
case_cmake() {  # case_cmake package|subdirectory
  local how=$1 d="$work/cmake-$1" prefix="$work/cmake-$1/prefix" args=()
  mkdir -p "$d/src"
  cp "$here/cmake/CMakeLists.txt" "$here/cmake/main.cpp" "$here/roundtrip.hpp" "$d/src/"
  if [ "$how" = package ]; then
    CXX="$gxx" CC=gcc meson setup "$d/meson" "$repo" --prefix "$prefix" \
      -Dtests=disabled -Dbenchmarks=disabled -Dexamples=false
    meson install -C "$d/meson"
    args=(-DCMAKE_PREFIX_PATH="$prefix")
  else
    args=(-DRINGNET_SOURCE="$repo")
  fi
  cmake -S "$d/src" -B "$d/build" -DRINGNET_HOW="$how" -DCMAKE_CXX_COMPILER="$gxx" \
    -DCMAKE_CXX_FLAGS="${warn[*]}" "${args[@]}" | tee "$d/configure.log"
  cmake --build "$d/build" --verbose | tee "$d/build.log"
  grep -q -- '-std=\(gnu\|c\)++20' "$d/build.log" || die "the target did not carry C++20"
  grep -q -- '-luring\|liburing\.so' "$d/build.log" || die "the target did not carry liburing"
  # One version for every consumption path: the CMake project's, meson's and the headers'.
  local mv
  mv=$(sed -n "s/^  version: '\([0-9.]*\)',/\1/p" "$repo/meson.build")
  grep -q "project(ringnet VERSION $mv " "$repo/CMakeLists.txt" || die "CMakeLists.txt version differs from meson's $mv"
  [ "$how" = subdirectory ] || grep -q "ringnet $mv from $prefix/share/cmake/ringnet" "$d/configure.log" \
    || die "find_package did not report ringnet $mv from the prefix"
  run_bin "$d/build/consumer"
  note "ringnet::ringnet via $how ($mv), C++20 and liburing from the target"
}

# ---- 3. vendored, renamed namespace -----------------------------------------------------------------
case_vendored() {
  local cxx=$1 d
  d="$work/vendored-$(compiler_tag "$1")"
  mkdir -p "$d"
  vendor_copy "$d"
  cp "$here/vendored/main.cpp" "$here/roundtrip.hpp" "$d/"
  # shellcheck disable=SC2086
  ( cd "$d" && "$cxx" "${std[@]}" "${warn[@]}" -DRINGNET_NAMESPACE=myproxy_net -Ithird_party \
      main.cpp -o consumer $uring_libs )
  local n
  n=$(count_ns "$d/consumer" myproxy_net)
  [ "$n" -gt 0 ] || die "no symbols in myproxy_net::v*:: (nm -C)"
  no_default_namespace "$d/consumer"
  run_bin "$d/consumer"
  note "$n symbols in myproxy_net::v*::, none mention ringnet"
}

# ---- 4. two vendored copies in one binary -------------------------------------------------------------
case_two_copies() {
  local cxx=$1 d lto=()
  d="$work/two-copies-$(compiler_tag "$1")"
  # g++: also let the LTO linker look for ODR violations between the copies.
  [ "$cxx" = "$gxx" ] && lto=(-flto=auto -Wodr)
  mkdir -p "$d/liba" "$d/libb"
  vendor_copy "$d/liba"
  vendor_copy "$d/libb"
  cp "$here/two_copies/liba.cpp" "$here/roundtrip.hpp" "$d/liba/"
  cp "$here/two_copies/libb.cpp" "$here/roundtrip.hpp" "$d/libb/"
  cp "$here/two_copies/main.cpp" "$d/"
  ( cd "$d/liba" && "$cxx" "${std[@]}" "${warn[@]}" "${lto[@]}" -DRINGNET_NAMESPACE=liba_net \
      -Ithird_party -c liba.cpp -o liba.o )
  ( cd "$d/libb" && "$cxx" "${std[@]}" "${warn[@]}" "${lto[@]}" -DRINGNET_NAMESPACE=libb_net \
      -Ithird_party -c libb.cpp -o libb.o )
  # shellcheck disable=SC2086
  ( cd "$d" && "$cxx" "${std[@]}" "${warn[@]}" "${lto[@]}" main.cpp liba/liba.o libb/libb.o \
      -o consumer $uring_libs )
  local a b
  a=$(count_ns "$d/consumer" liba_net)
  b=$(count_ns "$d/consumer" libb_net)
  if [ "$a" -eq 0 ] || [ "$b" -eq 0 ]; then die "symbols: liba_net $a, libb_net $b"; fi
  no_default_namespace "$d/consumer"
  run_bin "$d/consumer"
  note "liba_net $a / libb_net $b symbols${lto:+, -flto -Wodr clean}"
}

# ---- 5. two-TU ODR -----------------------------------------------------------------------------------------
# GCC 12 + -flto -Wodr reports every coroutine frame type ("<mangled function>.Frame") that two TUs
# both instantiate as an ODR violation: the frame's fields for co_await temporaries are named after
# the TU's internal decl numbers (D.12345_1_2), which differ from TU to TU. That is a compiler false
# positive (a 20-line coroutine without ringnet shows it), so those exact diagnostics are tolerated;
# any other ODR diagnostic fails the case. A positive control proves -Wodr is live on this toolchain.
odr_check_log() {  # odr_check_log LOG: fails on any -Wodr diagnostic but the coroutine-frame one
  python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
lines = text.splitlines()
bad, frames = [], 0
for i, line in enumerate(lines):
    if "violates the C++ One Definition Rule" in line:
        block = []
        for nxt in lines[i + 1:i + 12]:
            if "violates the C++ One Definition Rule" in nxt:
                break
            block.append(nxt)
        following = "\n".join(block)
        m = re.search(r"first difference of corresponding definitions is (.*)", following)
        frame_type = re.search(r"type .(struct )?\S*\.Frame. violates", line)
        temp_field = m and re.match(r"field .D\.\d+(_\d+)*.$", m.group(1).strip())
        if frame_type and temp_field:
            frames += 1
        else:
            bad.append(line)
    elif re.search(r"(warning|error):", line) and "One Definition Rule" not in line \
            and "all warnings being treated as errors" not in line \
            and "lto-wrapper" not in line and "collect2" not in line and "ld returned" not in line:
        bad.append(line)
if bad:
    print("ODR / link diagnostics other than GCC's coroutine-frame false positive:")
    print("\n".join(bad[:20]))
    sys.exit(1)
print(f"tolerated {frames} GCC coroutine-frame -Wodr false positives")
open(sys.argv[1] + ".frames", "w").write(str(frames))
PY
}

# The positive control: a real ODR violation must be diagnosed by the same flags.
odr_control() {
  local d=$1 cxx=$2
  mkdir -p "$d/control"
  printf 'struct odr_probe { int a; };\nint control_a(odr_probe* p) { return p->a; }\n' >"$d/control/a.cpp"
  printf 'struct odr_probe { long a; char b; };\nint control_a(odr_probe* p);\nint main() { odr_probe p{1, 2}; return control_a(&p); }\n' >"$d/control/b.cpp"
  ( cd "$d/control" && "$cxx" -O2 -flto=auto -Wodr a.cpp b.cpp -o control ) >"$d/control/log" 2>&1 || true
  grep -q "violates the C++ One Definition Rule" "$d/control/log" \
    || die "positive control: -flto -Wodr did not diagnose a deliberate ODR violation"
}

case_odr() {
  local cxx=$1 d lto=() lto_link=() how="no LTO" gcc=0
  d="$work/odr-$(compiler_tag "$1")"
  if [ "$cxx" = "$gxx" ]; then
    gcc=1
    lto=(-flto=auto -Wodr)
    lto_link=(-Wno-error=odr)  # judged by odr_check_log instead
    how="-flto -Wodr"
  elif [ -f /usr/lib/llvm-16/lib/LLVMgold.so ] && command -v ld.gold >/dev/null; then
    lto=(-flto=thin)
    lto_link=(-fuse-ld=gold)  # Debian's ld.lld is LLVM 14: it cannot read LLVM 16 bitcode
    how="-flto=thin (gold)"
  fi
  mkdir -p "$d"
  cp "$here"/odr/*.cpp "$here/odr/odr.hpp" "$here/roundtrip.hpp" "$d/"
  [ "$gcc" = 1 ] && odr_control "$d" "$cxx"
  local tu
  for tu in tu_a tu_b main; do
    ( cd "$d" && "$cxx" "${std[@]}" "${warn[@]}" "${lto[@]}" -I"$repo/include" -c "$tu.cpp" -o "$tu.o" )
  done
  # shellcheck disable=SC2086
  ( cd "$d" && "$cxx" "${std[@]}" "${warn[@]}" "${lto[@]}" "${lto_link[@]}" tu_a.o tu_b.o main.o \
      -o consumer $uring_libs ) >"$d/link.log" 2>&1 || { cat "$d/link.log"; die "link failed"; }
  if [ "$gcc" = 1 ]; then
    odr_check_log "$d/link.log" || { cat "$d/link.log"; die "ODR diagnostics (link log above)"; }
    how+=": no ODR violation beyond $(cat "$d/link.log.frames") coroutine-frame false positives (GCC); positive control diagnosed"
  else
    [ ! -s "$d/link.log" ] || { cat "$d/link.log"; die "the link printed diagnostics"; }
  fi
  run_bin "$d/consumer"
  note "3 TUs, $how"
}

# ---- 7. compile time ---------------------------------------------------------------------------------------
# Timed alone, before the other cases start, so they do not compete for the CPU.
syntax_seconds() {  # syntax_seconds CXX: best of two runs of -fsyntax-only on the umbrella header
  local best="" t0 t1 s _
  for _ in 1 2; do
    t0=$(date +%s%N)
    "$1" -std=c++20 -fsyntax-only -I"$repo/include" "$here/compile_time.cpp" || return 1
    t1=$(date +%s%N)
    s=$(( (t1 - t0) / 1000000 ))
    if [ -z "$best" ] || [ "$s" -lt "$best" ]; then best=$s; fi
  done
  printf '%d.%02d' $((best / 1000)) $(( (best % 1000) / 10 ))
}

# ---- driver ------------------------------------------------------------------------------------------------
names=()
start_case() {  # start_case NAME FUNCTION [ARGS...]: runs in the background, logs to NAME.log
  local name=$1 key=${1//\//-}
  shift
  names+=("$name")
  while [ "$(jobs -rp | wc -l)" -ge "$max_jobs" ]; do wait -n || true; done
  (
    set +e
    # Not part of an && / || list, so set -e really applies inside the case.
    ( case_key=$key; set -euo pipefail; "$@" ) >"$work/$key.log" 2>&1 </dev/null &
    wait $!
    echo $? >"$work/$key.rc"
  ) &
}

max_jobs=$(nproc 2>/dev/null || echo 2)
t_start=$(date +%s)

compile_line="compile-time"
for cxx in "$gxx" "$clangxx"; do
  [ -n "$cxx" ] || continue
  if s=$(syntax_seconds "$cxx" 2>"$work/compile-time.log"); then
    compile_line+="  $(compiler_tag "$cxx") ${s}s"
  else
    compile_line+="  $(compiler_tag "$cxx") FAILED"
  fi
done

[ -n "$gxx" ] || { echo "FAIL  g++ not found"; exit 1; }
start_case meson-subproject case_subproject
start_case installed-pkg-config case_pkgconfig
if command -v cmake >/dev/null; then
  start_case cmake-find-package case_cmake package
  start_case cmake-add-subdirectory case_cmake subdirectory
else
  echo "INFO  cmake not found: the CMake cases did not run"
fi
for cxx in "$gxx" "$clangxx"; do
  [ -n "$cxx" ] || continue
  tag=$(compiler_tag "$cxx")
  start_case "vendored-renamed/$tag" case_vendored "$cxx"
  start_case "two-copies/$tag" case_two_copies "$cxx"
  start_case "odr-two-tu/$tag" case_odr "$cxx"
done
wait

passed=0 failed=0 skipped=0
for name in "${names[@]}"; do
  key=${name//\//-}
  rc=$(cat "$work/$key.rc" 2>/dev/null || echo 1)
  details=$(paste -sd ';' "$work/$key.note" 2>/dev/null || true)
  case $rc in
    0) passed=$((passed + 1)); printf 'PASS  %-28s %s\n' "$name" "$details" ;;
    77) skipped=$((skipped + 1)); printf 'SKIP  %-28s %s\n' "$name" "io_uring unavailable" ;;
    *) failed=$((failed + 1)); printf 'FAIL  %-28s exit %s; log:\n' "$name" "$rc"
       sed 's/^/      | /' "$work/$key.log" | tail -n 60 ;;
  esac
done
# The compile-time figure is informational, but a header that does not compile is a failure.
if [[ $compile_line == *FAILED* ]]; then
  failed=$((failed + 1))
  echo "FAIL  $compile_line"
  sed 's/^/      | /' "$work/compile-time.log" | tail -n 30
else
  echo "INFO  $compile_line  (-fsyntax-only, <ringnet/ringnet.hpp> alone)"
fi
[ -n "$clangxx" ] || echo "INFO  clang++-16 not found: cases 3-5 ran with g++ only"
echo "consume: $passed passed, $failed failed, $skipped skipped in $(( $(date +%s) - t_start )) s"

if [ "$failed" -gt 0 ]; then exit 1; fi
if [ "$passed" -eq 0 ] && [ "$skipped" -gt 0 ]; then exit 77; fi
exit 0
