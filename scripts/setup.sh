#!/usr/bin/env bash
# Installs what building and testing hearth needs, idempotently: Debian
# packages (only those missing, so a second run does not touch apt) and rustup
# targets. Safe to run again and again; `make run` and `make test` call it.
set -euo pipefail

# `setup.sh --fuzz` (what `make fuzz` runs) adds what the fuzz targets need:
# a C++ compiler (libFuzzer is C++), the nightly toolchain and cargo-fuzz.
fuzz=0
if [ "${1:-}" = --fuzz ]; then fuzz=1; fi

# Debian packages hearth needs. Each capability adds its own here; a test
# that needs a tool listed here fails when it is missing, so keep this list
# complete (grep the tests and src for `Command::new(`).
#   gcc, libc6-dev:          the linker and C runtime rustc links with.
#   procps:                  `kill`, used by scripts and tests to stop the daemon;
#                            `sysctl`, to turn on IP forwarding for NAT.
#   qemu-system-x86:         the VMM for machines (KVM or software emulation).
#   qemu-utils:              qemu-img, for copy-on-write machine disks.
#   e2fsprogs:               mkfs.ext4 -d, to turn images into root disks;
#                            debugfs, with which the image tests read them.
#   debootstrap:             `hearth image build debian`.
#   xz-utils:                unpacking Debian's kernel (xz payloads).
#   lz4:                     the kernel tests check hearth's LZ4 decoder against `lz4 -l`.
#   skopeo, umoci,
#   docker-registry,
#   busybox-static, cpio:    the image tests build and serve an OCI image on loopback.
#   openssl:                 the image tests sign the registry's bearer tokens.
#   iproute2, nftables:      bridges, taps and the firewall of private networks.
#   iptables:                the delay line's rules on kernels without sch_netem
#                            (iptables-restore, iptables-save).
#   iputils-ping:            the network tests ping between namespaces.
#   python3:                 the Firecracker tests' stand-in firecracker.
#   python3-venv:            a virtual environment for schemathesis (below).
#   wrk:                     the load generator of `hearth bench apps`.
#   openssh-client:          ssh and ssh-keygen, for `hearth machine ssh`.
#   python3-aiosmtpd:        the SMTP server alert mail tests send to
#                            (hearth_testkit::smtp, Debian's python3).
#   chromium:                the browser the dashboard's tests drive
#                            (ui/tests/browser.mjs, through playwright-core).
#   etcd-server:             the store's etcd backend is tested against a real
#                            etcd, single member and a 3-member cluster.
#   protobuf-compiler:       protoc, which the etcd-client crate's build script
#                            runs to generate etcd's gRPC code; libprotobuf-dev
#                            holds the well-known types it imports
#                            (google/protobuf/descriptor.proto), which
#                            --no-install-recommends leaves out.
packages=(gcc libc6-dev procps qemu-system-x86 qemu-utils e2fsprogs debootstrap xz-utils lz4
          skopeo umoci docker-registry busybox-static cpio openssl iproute2 nftables iptables
          iputils-ping python3 python3-venv wrk openssh-client python3-aiosmtpd chromium
          etcd-server protobuf-compiler libprotobuf-dev)

# Rust targets: the guest agent is a static musl binary; apps and workflows
# are WebAssembly components.
targets=(x86_64-unknown-linux-musl wasm32-wasip2)

if ((fuzz)); then packages+=(g++); fi

say() { printf '\033[1msetup:\033[0m %s\n' "$*"; }

missing_packages() {
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
}

install_missing() {
  say "installing Debian packages: ${missing[*]}"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

missing_packages
if ((${#missing[@]})); then
  install_missing
  # Installing one package can remove another that was there: a machine
  # with a backported qemu-utils loses it when Debian's qemu-system-x86 is
  # installed beside it. So look again, and install what went.
  missing_packages
  if ((${#missing[@]})); then
    install_missing
    missing_packages
  fi
  if ((${#missing[@]})); then
    echo "setup: these Debian packages would not stay installed: ${missing[*]}; see \`apt-cache policy ${missing[*]}\` for why" >&2
    exit 1
  fi
else
  say "Debian packages present"
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo is not on PATH: install the Rust toolchain with rustup first (https://rustup.rs)" >&2
  exit 1
fi
if command -v rustup >/dev/null; then
  # `make test` lints with clippy and checks formatting with rustfmt; a
  # minimal rustup profile has neither.
  components=$(rustup component list --installed)
  for c in clippy rustfmt; do
    if ! grep -q "^$c" <<<"$components"; then
      say "adding Rust component $c"
      rustup component add "$c"
    fi
  done
  installed=$(rustup target list --installed)
  for t in "${targets[@]}"; do
    if ! grep -qx "$t" <<<"$installed"; then
      say "adding Rust target $t"
      rustup target add "$t"
    fi
  done
  say "Rust targets present: ${targets[*]}"
else
  say "rustup not found: skipping targets ${targets[*]} (needed later for guests and apps)"
fi

# The dashboard (ui/) is built with Node.js and npm: vite needs Node.js
# 20.19 or later. Where there is no node at all, Debian's is installed;
# an older one is reported rather than replaced.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  packages=(nodejs npm)
  missing_packages
  if ((${#missing[@]})); then install_missing; fi
fi
node_version=$(node --version 2>/dev/null || echo none)
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' 2>/dev/null; then
  echo "setup: the dashboard (ui/) needs Node.js 20.19 or later; this one is $node_version: install a newer nodejs and run setup again" >&2
  exit 1
fi
# Its npm packages, from the committed lock file, when the lock file is
# newer than what is installed (npm writes node_modules/.package-lock.json).
ui_dir=$(cd "$(dirname "$0")/../ui" && pwd)
if [ ! -e "$ui_dir/node_modules/.package-lock.json" ] || [ "$ui_dir/package-lock.json" -nt "$ui_dir/node_modules/.package-lock.json" ]; then
  say "installing the dashboard's npm packages (npm ci in ui/)"
  (cd "$ui_dir" && npm ci --no-audit --no-fund)
fi
say "Node.js $node_version and the dashboard's npm packages present"

# The tools that build handlers from source (`hearth fn deploy`), where the
# daemon looks for them (HEARTH_FN_TOOLS, by default ~/.cache/hearth/fn):
# componentize-js from npm, at the version crates/apps/fn/js's lock file
# pins, and componentize-py from PyPI, in a virtual environment.
fn_tools=${HEARTH_FN_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/hearth/fn}
fn_js_src=$(cd "$(dirname "$0")/../crates/apps/fn/js" && pwd)
if ! cmp -s "$fn_js_src/package-lock.json" "$fn_tools/js/package-lock.json" \
    || [ ! -e "$fn_tools/js/node_modules/@bytecodealliance/componentize-js/src/componentize.js" ]; then
  say "installing componentize-js into $fn_tools/js (npm ci)"
  rm -rf "$fn_tools/js"
  mkdir -p "$fn_tools/js"
  cp "$fn_js_src/package.json" "$fn_js_src/package-lock.json" "$fn_tools/js/"
  (cd "$fn_tools/js" && npm ci --no-audit --no-fund)
fi
COMPONENTIZE_PY_VERSION=0.25.1
if ! "$fn_tools/py/bin/componentize-py" --version 2>/dev/null | grep -q "componentize-py $COMPONENTIZE_PY_VERSION\$"; then
  say "installing componentize-py $COMPONENTIZE_PY_VERSION into $fn_tools/py"
  rm -rf "$fn_tools/py"
  python3 -m venv "$fn_tools/py"
  "$fn_tools/py/bin/pip" install -q --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
fi
# The engine with hearth's world spliced in, and the template of a built
# handler, which every JavaScript build reuses (crates/apps/fn/js/build.mjs):
# made here by building the starter handler, so that the first deploy does
# not pay for them. With both there, this is a fast build.
fn_warm=$(mktemp -d)
cp -r "$fn_js_src/../wit" "$fn_js_src/build.mjs" "$fn_js_src/entry.js" "$fn_js_src/prelude.js" "$fn_warm/"
cp "$fn_js_src/starter.js" "$fn_warm/handler.js"
(cd "$fn_warm" && env -i PATH="$PATH" TMPDIR="$fn_warm" \
  HEARTH_COMPONENTIZE_JS="$fn_tools/js/node_modules/@bytecodealliance/componentize-js/src/componentize.js" \
  HEARTH_FN_SPLICED="$fn_tools/js/spliced" node --single-threaded-gc build.mjs --warm) \
  || say "could not prepare the JavaScript engine ahead; the first deploy will"
rm -rf "$fn_warm"
say "handler build tools present: $fn_tools (componentize-js, componentize-py $COMPONENTIZE_PY_VERSION)"

# schemathesis, from PyPI, in a virtual environment of its own: `make test`
# runs it against the daemon's OpenAPI document (scripts/schemathesis.sh).
SCHEMATHESIS_VERSION=4.32.5
st_env=${XDG_CACHE_HOME:-$HOME/.cache}/hearth/schemathesis
if ! "$st_env/bin/st" --version 2>/dev/null | grep -q "version $SCHEMATHESIS_VERSION\$"; then
  say "installing schemathesis $SCHEMATHESIS_VERSION into $st_env"
  rm -rf "$st_env"
  python3 -m venv "$st_env"
  "$st_env/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
say "schemathesis present: $st_env"

if ((fuzz)); then
  if ! rustup run nightly cargo --version >/dev/null 2>&1; then
    say "installing the nightly Rust toolchain (cargo-fuzz needs it)"
    rustup toolchain install nightly --profile minimal
  fi
  if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
  fi
  say "fuzzing tools present: $(rustup run nightly rustc --version), $(cargo fuzz --version)"
fi
