#!/usr/bin/env bash
# ngx_mail_api build entry point.
#   ./build.sh          build the module, deliveryd and tools (after deps)
#   ./build.sh deps     install Debian packages and build the embedded FerretDB
#   ./build.sh test     deps + build + unit tests (ctest) + end-to-end tests (pytest)
#   ./build.sh demo     deps + build + run the whole stack locally (Ctrl-C stops it)
#   ./build.sh bench    deps + build + benchmarks in bench/
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILD=$ROOT/build
PY=/usr/bin/python3   # Debian's Python, where the python3-* packages below live

APT_PACKAGES=(
  nginx nginx-dev redis-server postgresql
  libhiredis-dev libcurl4-openssl-dev libssl-dev libmongoc-dev libbson-dev libjansson-dev libsimdjson-dev libev-dev libidn2-dev
  g++ make cmake ninja-build pkg-config googletest libgtest-dev clang libclang-rt-14-dev
  python3 python3-venv python3-pytest python3-pytest-timeout python3-requests python3-pymongo python3-redis python3-aiosmtpd python3-botocore
  python3-cryptography python3-dkim
  chromium chromium-driver python3-selenium   # the pages people see, looked at in a real browser (t/e2e/test_links.py)
  openssl curl ca-certificates wrk testssl.sh
  libdb5.3 libnsl2 libicu72    # what postfix's smtp-sink/smtp-source link (bench/deliveryd.py)
)
GO_MIN_MINOR=22                 # FerretDB v1.24 needs Go 1.22
GO_TOOLCHAIN=go1.22.12          # fetched through the Go module proxy when the local go is older

say() { printf '==> %s\n' "$*"; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

need_root_for_apt() {
  [ "$(id -u)" = 0 ] || die "installing Debian packages needs root: run as root, or install: ${missing[*]}"
}

deps_apt() {
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  need_root_for_apt
  say "installing ${#missing[@]} Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed: check the network and /etc/apt/sources.list"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install failed for: ${missing[*]}"
  # Debian starts these on install; the stack runs its own on loopback ports.
  for svc in nginx redis-server postgresql; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
      systemctl stop "$svc" || true
    fi
  done
}

go_ok() {  # $1 = go binary
  local v
  v=$("$1" env GOVERSION 2>/dev/null) || return 1
  v=${v#go}
  [ "${v%%.*}" -gt 1 ] || [ "$(echo "$v" | cut -d. -f2)" -ge $GO_MIN_MINOR ]
}

find_go() {  # prints the path of a go >= 1.$GO_MIN_MINOR; progress goes to stderr
  for g in go /usr/local/go/bin/go "$BUILD/go/bin/go"; do
    if command -v "$g" >/dev/null 2>&1 && go_ok "$g"; then command -v "$g"; return 0; fi
  done
  # Debian's go is older than FerretDB needs: use it to fetch the toolchain
  # module (golang.org/toolchain) through the Go module proxy.
  if ! command -v /usr/bin/go >/dev/null; then
    missing=(golang-go); need_root_for_apt
    say "installing Debian's golang-go to fetch Go $GO_TOOLCHAIN" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends golang-go >/dev/null \
      || die "apt-get install golang-go failed"
  fi
  say "fetching the Go toolchain $GO_TOOLCHAIN from the module proxy" >&2
  local mod="golang.org/toolchain@v0.0.1-$GO_TOOLCHAIN.linux-$(dpkg --print-architecture)" dir
  dir=$(cd "$BUILD" && GOFLAGS=-mod=mod /usr/bin/go mod download -json "$mod" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -n "$dir" ] || die "could not download $mod: check access to the Go module proxy"
  rm -rf "$BUILD/go" && cp -r "$dir" "$BUILD/go" && chmod -R u+w "$BUILD/go" && chmod +x "$BUILD/go/bin/"* "$BUILD/go/pkg/tool/"*/*
  echo "$BUILD/go/bin/go"
}

deps_ferretdb() {
  local bin=$BUILD/ferretdb src=$ROOT/tools/ferretdb
  if [ -x "$bin" ] && [ -z "$(find "$src" -newer "$bin" -type f)" ]; then return 0; fi
  mkdir -p "$BUILD"
  local go; go=$(find_go)
  say "building FerretDB (MongoDB wire protocol over PostgreSQL) with $("$go" env GOVERSION); first time takes about a minute"
  (cd "$src" && GOFLAGS=-mod=mod "$go" build -o "$bin" .) || die "FerretDB build failed: see the Go errors above"
}

deps_python() {
  # schemathesis is not in Debian: a venv that still sees Debian's packages
  local venv=$BUILD/venv
  if [ -x "$venv/bin/schemathesis" ]; then return 0; fi
  say "installing schemathesis from PyPI into $venv"
  mkdir -p "$BUILD"
  "$PY" -m venv --system-site-packages "$venv" || die "python3 -m venv failed: install python3-venv"
  "$venv/bin/pip" install -q --disable-pip-version-check schemathesis \
    || die "pip install schemathesis failed: check access to PyPI"
}

# postfix's smtp-sink and smtp-source (C SMTP test server and client, for
# bench/deliveryd.py), taken out of Debian's postfix package without
# installing postfix as this machine's MTA: the two programs and the two
# postfix libraries they link, in build/postfix (run with LD_LIBRARY_PATH).
deps_postfix_tools() {
  local dir=$BUILD/postfix tmp=$BUILD/postfix-deb
  if [ -x "$dir/smtp-sink" ] && [ -x "$dir/smtp-source" ]; then return 0; fi
  say "extracting smtp-sink and smtp-source from Debian's postfix package into $dir"
  rm -rf "$tmp" && mkdir -p "$tmp"
  if ! (cd "$tmp" && apt-get download postfix >/dev/null 2>&1); then
    need_root_for_apt
    apt-get update -qq || die "apt-get update failed: check the network and /etc/apt/sources.list"
    (cd "$tmp" && apt-get download postfix >/dev/null 2>&1) \
      || die "apt-get download postfix failed: check access to Debian's package archive"
  fi
  dpkg-deb -x "$tmp"/postfix_*.deb "$tmp/x" || die "dpkg-deb -x failed on $(ls "$tmp"/postfix_*.deb)"
  mkdir -p "$dir/lib"
  cp "$tmp/x/usr/sbin/smtp-sink" "$tmp/x/usr/sbin/smtp-source" "$dir/" \
    && cp "$tmp/x/usr/lib/postfix/libpostfix-util.so" "$tmp/x/usr/lib/postfix/libpostfix-global.so" "$dir/lib/" \
    || die "the postfix package has no smtp-sink/smtp-source or their libraries where expected: see $tmp/x"
  rm -rf "$tmp"
  local out; out=$(LD_LIBRARY_PATH=$dir/lib "$dir/smtp-sink" 2>&1 || true)  # no arguments: its usage line
  [[ $out == *usage:* ]] || die "$dir/smtp-sink does not run: check its libraries with LD_LIBRARY_PATH=$dir/lib ldd $dir/smtp-sink"
}

deps() {
  deps_apt
  deps_ferretdb
  deps_python
  deps_postfix_tools
}

nginx_objs() {
  local src=$BUILD/nginx-src marker=$BUILD/nginx-src/objs/ngx_mail_api_module_modules.c
  if [ -f "$marker" ] && [ "$marker" -nt "$ROOT/ngx_mail_api_module/config" ] \
     && [ "$marker" -nt /usr/share/nginx/src/conf_flags ]; then return 0; fi
  [ -f /usr/share/nginx/src/conf_flags ] || die "/usr/share/nginx/src is missing: run ./build.sh deps (package nginx-dev)"
  say "configuring nginx sources with Debian's conf_flags (module signature must match /usr/sbin/nginx)"
  rm -rf "$src" && mkdir -p "$BUILD" && cp -r /usr/share/nginx/src "$src"
  # shellcheck disable=SC1091
  (cd "$src" && . ./conf_flags && ./configure "${NGX_CONF_FLAGS[@]}" \
     --add-dynamic-module="$ROOT/ngx_mail_api_module" >"$BUILD/nginx-configure.log" 2>&1) \
    || die "nginx configure failed: see $BUILD/nginx-configure.log"
}

cmake_build() {  # $1 = build dir, rest = extra cmake arguments
  local dir=$1; shift
  local gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  if [ ! -f "$dir/CMakeCache.txt" ]; then
    say "configuring CMake in $dir"
    cmake -S "$ROOT" -B "$dir" "${gen[@]}" -DNGX_SRC="$BUILD/nginx-src" "$@" >/dev/null \
      || die "cmake configure failed: see the errors above"
  fi
  say "compiling in $dir"
  local rc=0
  cmake --build "$dir" -j"$(nproc)" >"$dir/compile.log" 2>&1 || rc=$?
  grep -vE '^\[[0-9]+/[0-9]+\] |^ninja: (Entering|no work)' "$dir/compile.log" || true
  [ $rc -eq 0 ] || die "compile failed: see the errors above (also in $dir/compile.log)"
}

build() {
  nginx_objs
  # shellcheck disable=SC2086
  cmake_build "$BUILD" ${CMAKE_ARGS:-}
  say "built: $BUILD/ngx_mail_api_module/ngx_mail_api_module.so, $BUILD/deliveryd/deliveryd, $BUILD/tools/mailapi-token/mailapi-token"
}

# libFuzzer targets (clang; t/fuzz: common/, the module's request parsers,
# deliveryd's Redis replies, provider answers and config), run for FUZZ_SECONDS each by the tests.
build_fuzz() {
  local dir=$BUILD/fuzz gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  if [ ! -f "$dir/CMakeCache.txt" ]; then
    cmake -S "$ROOT/t/fuzz" -B "$dir" "${gen[@]}" -DCMAKE_CXX_COMPILER=clang++ >/dev/null \
      || die "cmake configure of the fuzzers failed: is clang installed? run ./build.sh deps"
  fi
  cmake -S "$ROOT/t/fuzz" -B "$dir" -DFUZZ_SECONDS="${FUZZ_SECONDS:-20}" >/dev/null
  say "compiling fuzzers in $dir"
  cmake --build "$dir" >"$dir/compile.log" 2>&1 || { cat "$dir/compile.log"; die "fuzzer build failed"; }
}

# The same code with AddressSanitizer and UBSan, for the tests.
build_sanitized() {
  cmake_build "$BUILD/asan" -DMAILAPI_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
}

# ./build.sh test runs in phases, each given what is left of one budget for
# the whole run: MAILAPI_TEST_BUDGET (seconds, or 80m, 1h; default 80m),
# counted from the start of ./build.sh, so installing and building count
# too: CI stops a job at 90 minutes and a failing run must end inside that,
# with its summary and its logs. A phase that runs out is interrupted
# (SIGINT: pytest stops the servers and prints what it has; SIGKILL a minute
# later); pytest also gives each test MAILAPI_TEST_TIMEOUT seconds (default
# 300; setup and call, then the test fails with its servers' logs), never
# more than is left, and starts no test in the last minute of the budget.
# Whatever happens, the run ends with a summary of its phases and where
# their logs are.
budget_seconds() {
  local b=${MAILAPI_TEST_BUDGET:-80m} n
  n=${b%[smh]}
  [[ $n =~ ^[0-9]+$ ]] || die "MAILAPI_TEST_BUDGET=$b: give seconds, or minutes or hours as 80m or 1h"
  case $b in
    *h) echo $(( n * 3600 )) ;;
    *m) echo $(( n * 60 )) ;;
    *) echo "$n" ;;
  esac
}

mmss() { printf '%dm%02ds' $(( $1 / 60 )) $(( $1 % 60 )); }

PHASES=()    # one line per phase, for the summary
LOGS=()      # where the phases that ran keep their logs

# phase NAME CMD...: runs CMD (a command, or a function of this script) with
# what is left of the budget, and records how it went; a phase that fails or
# runs out of time ends the run with the summary.
phase() {
  local name=$1; shift
  local left=$(( BUDGET - SECONDS )) t0=$SECONDS rc=0 pid interrupted=0 status
  if (( left < 30 )); then
    PHASES+=("$(printf '%-34s %s' "$name" "not started: the budget is spent")")
    test_summary "out of time before: $name"
  fi
  say "$name: $(mmss "$left") of the $(mmss "$BUDGET") budget left"
  if declare -F "$1" >/dev/null; then  # a function: in a bash that has this script's functions
    ROOT=$ROOT BUILD=$BUILD PY=$PY timeout -s INT -k 60 "$left" \
      bash -c "set -euo pipefail; $(declare -f); \"\$@\"" "$name" "$@" &
  else
    timeout -s INT -k 60 "$left" "$@" &
  fi
  pid=$!
  # Ctrl-C or a TERM from CI: the phase gets the INT (a background job would not)
  trap 'interrupted=1; kill -INT "$pid" 2>/dev/null || true' INT TERM
  while :; do
    rc=0; wait "$pid" || rc=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  trap - INT TERM
  if (( interrupted )); then status="interrupted"
  elif (( rc == 0 )); then status="ok"
  elif (( rc == 124 || rc == 137 )); then status="OUT OF TIME"
  elif (( BUDGET - SECONDS < 90 )); then status="OUT OF TIME (exit $rc)"  # pytest stopped at its deadline
  else status="FAILED (exit $rc)"
  fi
  PHASES+=("$(printf '%-34s %-18s %s' "$name" "$status" "$(mmss $(( SECONDS - t0 )))")")
  case $status in
    ok) ;;
    interrupted) test_summary "interrupted in: $name" ;;
    "OUT OF TIME"*) test_summary "the budget ran out in: $name" ;;
    *) test_summary "failed: $name" ;;
  esac
}

test_summary() {  # $1: how the run ended; prints the phases and the logs, and ends the run
  echo
  say "summary: $1 ($(mmss "$SECONDS") of the $(mmss "$BUDGET") budget used)"
  printf '    %s\n' "${PHASES[@]}"
  if [ ${#LOGS[@]} -gt 0 ]; then
    echo "    logs:"
    printf '      %s\n' "${LOGS[@]}"
  fi
  [ "$1" = ok ] && return 0
  exit 1
}

unit_tests() { cd "$1" && ctest --output-on-failure -j"$(nproc)"; }
fuzz_tests() { cd "$BUILD/fuzz" && ctest -j3 --output-on-failure; }

run_tests() {
  BUDGET=$(budget_seconds)
  local run
  local pytest_args=(-q -p no:cacheprovider -p timeout --timeout "${MAILAPI_TEST_TIMEOUT:-300}")
  # pytest stops itself a minute before the budget does (its summary and the
  # servers' logs are printed, the servers stopped)
  export MAILAPI_TEST_DEADLINE

  LOGS+=("unit tests: $BUILD/Testing/Temporary/LastTest.log")
  phase "unit tests (ctest)" unit_tests "$BUILD"

  say "end-to-end tests (pytest, real nginx, redis, FerretDB and SMTP server on loopback)"
  run=$(mktemp -d /tmp/mailapi-test.XXXXXX)
  LOGS+=("end-to-end: every test's servers (logs, data, sanitizer reports) under $run/e2e")
  MAILAPI_TEST_DEADLINE=$(( $(date +%s) + BUDGET - SECONDS - 60 ))
  phase "end-to-end tests" "$PY" -m pytest "$ROOT/t/e2e" "${pytest_args[@]}" --basetemp "$run/e2e" "$@"

  LOGS+=("fuzzers: $BUILD/fuzz (compile.log; crash-*, timeout-*, oom-* inputs)")
  phase "fuzzers (build)" build_fuzz
  say "fuzzing tokens, messages, mail composition, key files, requests, Redis replies, provider answers and deliveryd's config (${FUZZ_SECONDS:-20}s each, 3 at a time, crashes land in $BUILD/fuzz)"
  phase "fuzzers" fuzz_tests

  if [ -z "${MAILAPI_SKIP_SANITIZE:-}" ]; then
    LOGS+=("ASan build: $BUILD/asan/compile.log; its unit tests: $BUILD/asan/Testing/Temporary/LastTest.log")
    phase "ASan + UBSan build" build_sanitized
    phase "unit tests under ASan + UBSan" unit_tests "$BUILD/asan"
    say "end-to-end tests against the ASan + UBSan build (nginx with the runtime preloaded); a sanitizer report fails the test"
    LOGS+=("end-to-end under ASan + UBSan: $run/e2e-asan (sanitizer.<pid> files in each stack's directory)")
    MAILAPI_TEST_DEADLINE=$(( $(date +%s) + BUDGET - SECONDS - 60 ))
    phase "end-to-end tests under ASan + UBSan" env MAILAPI_BUILD="$BUILD/asan" MAILAPI_SANITIZE=1 \
      "$PY" -m pytest "$ROOT/t/e2e" "${pytest_args[@]}" --basetemp "$run/e2e-asan" "$@"
  fi
  rm -rf "$run"  # all passed: nothing to look at
  LOGS=()
  test_summary ok
}

case "${1:-build}" in
  deps)  deps ;;
  build) deps; build ;;
  asan)  deps; build; build_sanitized ;;
  test)  shift; deps; build; run_tests "$@" ;;
  demo)  deps; build; exec "$PY" "$ROOT/tools/demo.py" ;;
  bench) shift; deps; build; exec "$ROOT/bench/run.sh" "$@" ;;
  clean) rm -rf "$BUILD" ;;
  *) echo "usage: ./build.sh [deps|build|test|demo|bench|clean]" >&2; exit 2 ;;
esac
