#!/usr/bin/env bash
# Builds the OCI images of the containerd test harness (tests/src/containerd.rs)
# without Docker or a registry: reproducible OCI image-layout archives that
# `ctr images import` accepts, one per image, under target/images/:
#
#   <name>.oci.tar   oci-layout, index.json, blobs/sha256/* (one gzip layer)
#   <name>.digest    the manifest digest, sha256:...
#   <name>.id        the config digest (the image ID the CRI reports)
#   <name>.ref       the image reference, e.g. aver.test/pause:1
#
# The same inputs give the same bytes: the layer tar has sorted entries, mtime
# 0, uid/gid 0 and no user names; gzip carries no name or time; the JSON is
# canonical (sorted keys, no whitespace) and has no creation date.
#
# Usage:
#   scripts/images.sh            builds the test images (pause, busybox)
#   scripts/images.sh --check    also builds each twice and fails if the
#                                digests differ
#   scripts/images.sh --project  builds the images of the workspace's own
#                                binaries instead (aver-enclave, the stub
#                                engine) from target/debug; see
#                                build_project_images
#   scripts/images.sh --release  cargo build --release --locked, then the
#                                release images (aver-controller,
#                                aver-enclave, aver-node, aver-stub-engine)
#                                into target/images/release/ with
#                                digests.txt, images.json and
#                                values-images.yaml; see build_release_images
#   scripts/images.sh --release --check   also packages each twice more and
#                                fails if a digest differs
#   AVER_IMAGES_PROFILE=debug scripts/images.sh --release   the same images
#                                from target/debug (already built), into
#                                target/images/release-debug/ (the tests)
#   scripts/images.sh --values [DIR]   writes DIR/values-images.yaml (and
#                                digests.txt, images.json) again from the
#                                images in DIR (default target/images/release)
#   source scripts/images.sh     only defines build_image (see below), to
#                                package other binaries, e.g.
#     build_image enclave aver.test/enclave:1 /bin/aver-enclave --with-libs \
#       target/debug/aver-enclave=/bin/aver-enclave
#
# Needs python3 (standard library only); the pause image needs gcc and the
# static C library (build-essential), busybox needs busybox-static
# (scripts/lib/containerd.sh installs both).

# Where the archives go: target/images of this repository, or
# $CARGO_TARGET_DIR/images.
images_dir() {
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  echo "${CARGO_TARGET_DIR:-$root/target}/images"
}

# build_image NAME REF ENTRYPOINT [OPTION...] FILE...
#
# Writes $(images_dir)/NAME.{oci.tar,digest,id,ref} (or into $AVER_IMAGES_OUT):
# a single-layer image named REF whose entrypoint is ENTRYPOINT (a path
# inside the image; extra arguments with --cmd) and default user
# 65532:65532. Leaves the archive untouched (same mtime) when its content
# would not change.
#
# FILE is SRC (copied to /bin/<basename of SRC>) or SRC=DEST (copied to the
# absolute path DEST); the file's content and executable bit are copied,
# symlinks followed. Options, anywhere among the FILEs:
#   --with-libs        also copy the shared libraries every dynamically linked
#                      FILE needs (found with ldd, at the paths ldd prints)
#                      and the dynamic loader; libraries loaded with dlopen
#                      (e.g. the libtss2 TCTI modules) must be given as FILEs
#                      (SRC=SRC) and get their own libraries too
#   --symlink LINK=TARGET   a symbolic link LINK (absolute) to TARGET
#   --dir PATH         an empty directory (mode 0755); /tmp (1777) always exists
#   --env NAME=VALUE   an environment variable (PATH is always set)
#   --cmd ARG          an argument appended to the default command (repeatable)
#   --user UID[:GID]   the default user instead of 65532:65532
#   --workdir PATH     the working directory (default /)
#   --compress-level N gzip level of the layer, 1-9 (default 9; the large
#                      images of the workspace's binaries use a faster one)
#   --label KEY=VALUE  a label in the image config (repeatable), next to
#                      org.opencontainers.image.title, which is always NAME
build_image() {
  if [ $# -lt 3 ]; then
    echo "usage: build_image NAME REF ENTRYPOINT [--with-libs] [--symlink L=T] [--dir D] [--env K=V] [--cmd ARG] [--user U] [--workdir W] [--label K=V] FILE..." >&2
    return 2
  fi
  local out
  out=${AVER_IMAGES_OUT:-$(images_dir)}
  mkdir -p "$out"
  python3 - "$out" "$@" <<'PY'
import gzip
import hashlib
import io
import json
import os
import platform
import re
import stat
import subprocess
import sys
import tarfile

out, name, ref, entrypoint, *rest = sys.argv[1:]

if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
    sys.exit(f"build_image: bad image name {name!r}")

files = {}      # dest -> (src, mode)
links = {}      # dest -> target
dirs = {"/tmp": 0o1777}
env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
cmd = []
user = "65532:65532"
workdir = "/"
with_libs = False
compress_level = 9
labels = {"org.opencontainers.image.title": name}

def absolute(path, what):
    if not path.startswith("/") or "//" in path or path.endswith("/") and path != "/":
        sys.exit(f"build_image: {what} must be an absolute path: {path!r}")
    parts = path.split("/")[1:]
    if any(p in (".", "..") for p in parts):
        sys.exit(f"build_image: {what} must not contain . or ..: {path!r}")
    return path

args = iter(rest)
for arg in args:
    def value():
        try:
            return next(args)
        except StopIteration:
            sys.exit(f"build_image: {arg} needs a value")
    if arg == "--with-libs":
        with_libs = True
    elif arg == "--symlink":
        link, sep, target = value().partition("=")
        if not sep or not target:
            sys.exit("build_image: --symlink needs LINK=TARGET")
        links[absolute(link, "a symlink")] = target
    elif arg == "--dir":
        dirs[absolute(value(), "a directory")] = 0o755
    elif arg == "--env":
        kv = value()
        if "=" not in kv:
            sys.exit("build_image: --env needs NAME=VALUE")
        key = kv.split("=", 1)[0]
        env = [e for e in env if e.split("=", 1)[0] != key] + [kv]
    elif arg == "--cmd":
        cmd.append(value())
    elif arg == "--user":
        user = value()
    elif arg == "--workdir":
        workdir = absolute(value(), "the working directory")
    elif arg == "--label":
        key, sep, val = value().partition("=")
        if not sep or not key:
            sys.exit("build_image: --label needs KEY=VALUE")
        labels[key] = val
    elif arg == "--compress-level":
        level = value()
        if level not in [str(n) for n in range(1, 10)]:
            sys.exit(f"build_image: --compress-level must be 1 to 9, not {level!r}")
        compress_level = int(level)
    elif arg.startswith("--"):
        sys.exit(f"build_image: unknown option {arg}")
    else:
        src, sep, dest = arg.partition("=")
        dest = dest if sep else "/bin/" + os.path.basename(src)
        if not os.path.isfile(src):
            sys.exit(f"build_image: {src} is not a file")
        files[absolute(dest, "a destination")] = src

def needed_libs(path):
    """The loader and shared libraries of a dynamically linked ELF, as the
    paths ldd resolves them to (empty for static binaries and scripts)."""
    with open(path, "rb") as f:
        if f.read(4) != b"\x7fELF":
            return []
    run = subprocess.run(["ldd", path], capture_output=True, text=True,
                         env={**os.environ, "LC_ALL": "C"})
    if run.returncode != 0:
        if "not a dynamic executable" in run.stdout + run.stderr:
            return []
        sys.exit(f"build_image: ldd {path} failed: {run.stderr.strip()}")
    libs = []
    for line in run.stdout.splitlines():
        line = line.strip()
        if "=> not found" in line:
            sys.exit(f"build_image: {path} needs a library that is not installed: {line}")
        m = re.match(r"\S+ => (/\S+) \(0x[0-9a-f]+\)$", line) or re.match(r"(/\S+) \(0x[0-9a-f]+\)$", line)
        if m:
            libs.append(m.group(1))
    return libs

if with_libs:
    for dest, src in sorted(files.items()):
        for lib in needed_libs(src):
            files.setdefault(lib, lib)

for path in [entrypoint]:
    absolute(path, "the entrypoint")
if entrypoint not in files and entrypoint not in links:
    sys.exit(f"build_image: the entrypoint {entrypoint} is not among the image's files or symlinks")

# The layer: every parent directory, then files, links and directories, in
# sorted order, with fixed metadata.
entries = {}
def parents(path):
    parts = path.strip("/").split("/")[:-1]
    for i in range(1, len(parts) + 1):
        entries.setdefault("/" + "/".join(parts[:i]), ("dir", 0o755))
for dest, mode in dirs.items():
    parents(dest)
    entries[dest] = ("dir", mode)
for dest, src in files.items():
    parents(dest)
    executable = os.stat(src).st_mode & stat.S_IXUSR
    entries[dest] = ("file", 0o755 if executable else 0o644, src)
for dest, target in links.items():
    parents(dest)
    entries[dest] = ("link", 0o777, target)
for path, entry in entries.items():
    parent = os.path.dirname(path)
    if parent != "/" and entries[parent][0] != "dir":
        sys.exit(f"build_image: {path} is below {parent}, which is not a directory")

raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
    for path in sorted(entries):
        kind, mode, *extra = entries[path]
        info = tarfile.TarInfo(path.lstrip("/"))
        info.mode, info.mtime = mode, 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        if kind == "dir":
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        elif kind == "link":
            info.type, info.linkname = tarfile.SYMTYPE, extra[0]
            tar.addfile(info)
        else:
            with open(extra[0], "rb") as f:
                data = f.read()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
layer_tar = raw.getvalue()

packed = io.BytesIO()
with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0, compresslevel=compress_level) as gz:
    gz.write(layer_tar)
layer = packed.getvalue()

def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()

def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()

arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
        "s390x": "s390x", "riscv64": "riscv64"}.get(platform.machine(), platform.machine())
config = canonical({
    "architecture": arch,
    "os": "linux",
    "config": {
        "User": user,
        "Entrypoint": [entrypoint],
        **({"Cmd": cmd} if cmd else {}),
        "Env": env,
        "WorkingDir": workdir,
        "Labels": labels,
    },
    "rootfs": {"type": "layers", "diff_ids": [digest(layer_tar)]},
    "history": [{"created_by": "scripts/images.sh build_image " + name}],
})
manifest = canonical({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
               "digest": digest(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest(layer), "size": len(layer)}],
})
tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else "latest"
index = canonical({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest(manifest), "size": len(manifest),
        "platform": {"architecture": arch, "os": "linux"},
        # containerd names the imported image after io.containerd.image.name;
        # ref.name is the OCI spec's tag.
        "annotations": {"io.containerd.image.name": ref,
                        "org.opencontainers.image.ref.name": tag},
    }],
})
layout = canonical({"imageLayoutVersion": "1.0.0"})

archive = io.BytesIO()
with tarfile.open(fileobj=archive, mode="w", format=tarfile.PAX_FORMAT) as tar:
    def put(path, data, mode=0o644):
        info = tarfile.TarInfo(path)
        info.mode, info.mtime, info.size = mode, 0, len(data)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(data))
    def mkdir(path):
        info = tarfile.TarInfo(path)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info)
    put("oci-layout", layout)
    put("index.json", index)
    mkdir("blobs")
    mkdir("blobs/sha256")
    for blob in sorted([config, manifest, layer], key=digest):
        put("blobs/sha256/" + digest(blob).split(":", 1)[1], blob)
data = archive.getvalue()

def write_if_changed(path, content):
    try:
        with open(path, "rb") as f:
            if f.read() == content:
                return
    except FileNotFoundError:
        pass
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(content)
    os.replace(tmp, path)

base = os.path.join(out, name)
write_if_changed(base + ".oci.tar", data)
write_if_changed(base + ".digest", (digest(manifest) + "\n").encode())
write_if_changed(base + ".id", (digest(config) + "\n").encode())
write_if_changed(base + ".ref", (ref + "\n").encode())
print(f"images: {name} {ref} {digest(manifest)} ({len(data)} bytes)")
PY
}

# The pause binary, rebuilt only when tests/images/pause.c changed.
build_pause_binary() {
  local root src bin
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  src="$root/tests/images/pause.c"
  bin="$(images_dir)/build/pause"
  mkdir -p "$(dirname "$bin")"
  if [ ! -x "$bin" ] || [ "$src" -nt "$bin" ]; then
    # -s and no -g: nothing machine- or path-specific in the binary.
    gcc -static -Os -s -Wall -Wextra -Werror -o "$bin.tmp.$$" "$src"
    mv "$bin.tmp.$$" "$bin"
  fi
  echo "$bin"
}

# The test images. The busybox applets are symlinks to /bin/busybox.
build_test_images() {
  local pause busybox=/bin/busybox applet links=()
  pause=$(build_pause_binary)
  build_image pause aver.test/pause:1 /pause "$pause=/pause"

  if [ ! -x "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
    echo "images: $busybox is missing or not static: apt-get install busybox-static" >&2
    return 1
  fi
  for applet in sh sleep cat env ls nc wget id; do
    links+=(--symlink "/bin/$applet=busybox")
  done
  build_image busybox aver.test/busybox:1 /bin/sh "$busybox=/bin/busybox" "${links[@]}"
}

# The target directory cargo builds into (CARGO_TARGET_DIR or target/).
target_dir() {
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  echo "${CARGO_TARGET_DIR:-$root/target}"
}

# build_image_cached NAME REF ENTRYPOINT ARG...
#
# build_image, skipped when nothing it reads changed since the last build of
# NAME: the arguments, build_image itself, the content of every FILE and, with
# --with-libs, of every library ldd resolves for them. The digest of all that
# is kept in $(images_dir)/NAME.inputs. For images of large binaries, where
# build_image (reading and compressing everything) takes seconds.
build_image_cached() {
  local name=$1 out key arg src files=() with_libs=0 expect_value=0
  out=${AVER_IMAGES_OUT:-$(images_dir)}
  for arg in "${@:4}"; do
    if [ "$expect_value" = 1 ]; then expect_value=0; continue; fi
    case $arg in
      --with-libs) with_libs=1 ;;
      --symlink | --dir | --env | --cmd | --user | --workdir | --compress-level | --label) expect_value=1 ;;
      *) src=${arg%%=*}; files+=("$src") ;;
    esac
  done
  key=$(
    {
      declare -f build_image
      printf '%s\0' "$@"
      for src in "${files[@]}"; do
        sha256sum "$(readlink -f "$src")"
        if [ "$with_libs" = 1 ]; then
          LC_ALL=C ldd "$src" 2>/dev/null | grep -o '/[^ ]*' | sort -u | while read -r lib; do
            sha256sum "$(readlink -f "$lib")"
          done
        fi
      done
    } | sha256sum | cut -d' ' -f1
  )
  if [ -f "$out/$name.oci.tar" ] && [ "$(cat "$out/$name.inputs" 2>/dev/null)" = "$key" ]; then
    echo "images: $name $(cat "$out/$name.ref") $(cat "$out/$name.digest") (unchanged)"
    return 0
  fi
  rm -f "$out/$name.inputs"
  build_image "$@"
  echo "$key" >"$out/$name.inputs"
}

# stripped_binary BIN [PROFILE]
# A workspace binary from $(target_dir)/PROFILE without its debug information
# (objcopy --strip-debug is deterministic; a debug build's DWARF is most of
# its size), copied again only when the build is newer.
stripped_binary() {
  local bin=$1 profile=${2:-${AVER_IMAGES_PROFILE:-debug}} src dest
  src="$(target_dir)/$profile/$bin"
  dest="$(images_dir)/build/$profile/$bin"
  if [ ! -x "$src" ]; then
    echo "images: $src is missing: build it first (cargo build --workspace --bins)" >&2
    return 1
  fi
  mkdir -p "$(dirname "$dest")"
  if [ ! -x "$dest" ] || [ "$src" -nt "$dest" ]; then
    objcopy --strip-debug "$src" "$dest.tmp.$$"
    touch -r "$src" "$dest.tmp.$$"
    mv "$dest.tmp.$$" "$dest"
  fi
  echo "$dest"
}

# The images of the workspace's own binaries, for the node tests
# (tests/src/node_agent.rs), from $(target_dir)/debug (AVER_IMAGES_PROFILE
# for another profile):
#
#   enclave      aver.test/enclave:dev      /bin/aver-enclave, dynamically
#                linked to libtss2; libtss2-tctildr loads the TCTI module
#                the --tcti names with dlopen, so the swtpm and device
#                modules are added explicitly (next to the other libtss2)
#   stub-engine  aver.test/stub-engine:dev  /bin/aver-stub-engine
#   agent-probe  aver.test/agent-probe:1    busybox and /bin/unix-http
#                (tests/images/unix-http.c): a container that tries the
#                agent socket, which busybox's nc and wget cannot reach
build_project_images() {
  local enclave engine tctildr libdir tcti modules=()
  enclave=$(stripped_binary aver-enclave)
  engine=$(stripped_binary aver-stub-engine)
  tctildr=$(LC_ALL=C ldd "$enclave" | awk '$1 ~ /^libtss2-tctildr\.so/ {print $3}')
  if [ -z "$tctildr" ]; then
    echo "images: $enclave is not linked to libtss2-tctildr (ldd: $(ldd "$enclave" 2>&1 | tr '\n' ' '))" >&2
    return 1
  fi
  libdir=$(dirname "$tctildr")
  for tcti in swtpm device; do
    if [ ! -e "$libdir/libtss2-tcti-$tcti.so.0" ]; then
      echo "images: $libdir/libtss2-tcti-$tcti.so.0 is missing: apt-get install libtss2-dev" >&2
      return 1
    fi
    modules+=("$libdir/libtss2-tcti-$tcti.so.0=$libdir/libtss2-tcti-$tcti.so.0")
  done
  build_image_cached enclave aver.test/enclave:dev /bin/aver-enclave --with-libs \
    --compress-level 1 "$enclave=/bin/aver-enclave" "${modules[@]}"
  build_image_cached stub-engine aver.test/stub-engine:dev /bin/aver-stub-engine --with-libs \
    --compress-level 1 "$engine=/bin/aver-stub-engine"
  build_agent_probe_image
}

# busybox with unix-http, rebuilt only when tests/images/unix-http.c changed.
build_agent_probe_image() {
  local root src bin busybox=/bin/busybox applet links=()
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  src="$root/tests/images/unix-http.c"
  bin="$(images_dir)/build/unix-http"
  mkdir -p "$(dirname "$bin")"
  if [ ! -x "$bin" ] || [ "$src" -nt "$bin" ]; then
    gcc -static -Os -s -Wall -Wextra -Werror -o "$bin.tmp.$$" "$src"
    mv "$bin.tmp.$$" "$bin"
  fi
  for applet in sh sleep cat env ls nc wget id echo test; do
    links+=(--symlink "/bin/$applet=busybox")
  done
  build_image_cached agent-probe aver.test/agent-probe:1 /bin/sh "$busybox=/bin/busybox" \
    "$bin=/bin/unix-http" "${links[@]}"
}

# ---------------------------------------------------------------------------
# Release images (--release): what a release publishes, and what the chart
# and the kind suite run, pinned by digest.
#
#   aver-controller   /bin/aver-controller   user 65532:65532
#   aver-enclave      /bin/aver-enclave      user 65532:65532, with the
#                     libtss2 TCTI modules it loads with dlopen (device,
#                     swtpm, mssim)
#   aver-node         /bin/aver-node         user 0:0 (see below), with the
#                     same TCTI modules
#   aver-stub-engine  /bin/aver-stub-engine  user 65532:65532, default
#                     command 127.0.0.1:8000 (the engine port on the pod's
#                     loopback)
#
# Each holds its binary (debug information stripped), the shared libraries
# ldd resolves for it and the dynamic loader, as installed on the build
# machine — no shell, no package manager, nothing else (the libraries are
# Debian's, so the same Debian release gives the same bytes). aver-node runs
# as root by design: it is the node's CRI gate, so it must open the TPM
# resource manager (/dev/tpmrm0, root-owned), connect to containerd's root-
# only socket and create the kubelet-facing socket in /run/aver-node; it is
# part of the hardened node image, not a pod a tenant controls.
#
# Labels: org.opencontainers.image.{title,source,revision,version,licenses};
# revision is the git commit (AVER_IMAGE_REVISION overrides it), so the same
# sources give the same bytes. No creation date (it would change every
# build). References: $AVER_IMAGE_REGISTRY/NAME:VERSION (default registry
# ghcr.io/aver-dev, version the workspace's).
#
# Written to $(images_dir)/release/: NAME.{oci.tar,digest,id,ref},
# digests.txt ("NAME REFERENCE DIGEST" per line), images.json and
# values-images.yaml (Helm values for charts/aver pinning the controller and
# enclave images by digest).
#
# AVER_IMAGES_PROFILE=debug: the same images from target/debug (which must be
# built already: cargo build --workspace --bins; nothing is compiled) into
# $(images_dir)/release-debug/, tagged VERSION-debug — what the tests use,
# because a release build of the four binaries takes many minutes.

release_names=(aver-controller aver-enclave aver-node aver-stub-engine)

release_dir() {
  local profile=${AVER_IMAGES_PROFILE:-release}
  if [ "$profile" = release ]; then
    echo "$(images_dir)/release"
  else
    echo "$(images_dir)/release-$profile"
  fi
}

# The workspace's version (Cargo.toml [workspace.package]).
workspace_version() {
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1
}

# The TCTI modules libtss2-tctildr loads with dlopen, next to the libtss2 the
# binary links, as SRC=SRC arguments of build_image.
tcti_modules() {
  local bin=$1 tctildr libdir tcti
  tctildr=$(LC_ALL=C ldd "$bin" | awk '$1 ~ /^libtss2-tctildr\.so/ {print $3}')
  if [ -z "$tctildr" ]; then
    echo "images: $bin is not linked to libtss2-tctildr" >&2
    return 1
  fi
  libdir=$(dirname "$tctildr")
  for tcti in device swtpm mssim; do
    if [ ! -e "$libdir/libtss2-tcti-$tcti.so.0" ]; then
      echo "images: $libdir/libtss2-tcti-$tcti.so.0 is missing: apt-get install libtss2-dev" >&2
      return 1
    fi
    echo "$libdir/libtss2-tcti-$tcti.so.0=$libdir/libtss2-tcti-$tcti.so.0"
  done
}

# The release binaries: cargo build --release --locked (only for the release
# profile; other profiles must be built already).
build_release_binaries() {
  local profile=${AVER_IMAGES_PROFILE:-release} root start=$SECONDS
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [ "$profile" != release ]; then
    echo "images: release images from $(target_dir)/$profile, not compiled here (cargo build --workspace --bins builds them)"
    return 0
  fi
  echo "images: cargo build --release --locked of aver-controller, aver-enclave, aver-node, aver-stub-engine (minutes on a fresh checkout; cached in $(target_dir)/release)"
  (cd "$root" && cargo build --release --locked \
    -p aver-controller -p aver-enclave -p aver-node -p aver-tests \
    --bin aver-controller --bin aver-enclave --bin aver-node --bin aver-stub-engine)
  echo "images: cargo build --release done in $((SECONDS - start))s"
}

# release_image NAME ARG... — build_image_cached NAME ARG... into
# release_dir, recording the arguments in NAME.args for --check.
release_image() {
  local name=$1 out
  out=$(release_dir)
  printf '%s\0' "$@" >"$out/$name.args.tmp.$$"
  mv "$out/$name.args.tmp.$$" "$out/$name.args"
  AVER_IMAGES_OUT=$out build_image_cached "$@"
}

build_release_images() {
  local profile=${AVER_IMAGES_PROFILE:-release} root out version tag registry revision
  local level=9 name enclave node list labels=() modules=() start=$SECONDS
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  out=$(release_dir)
  version=$(workspace_version)
  registry=${AVER_IMAGE_REGISTRY:-ghcr.io/aver-dev}
  tag=$version
  if [ "$profile" != release ]; then
    # Not a release: its own tag, and faster compression for the tests.
    tag=$version-$profile
    level=1
  fi
  revision=${AVER_IMAGE_REVISION:-$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)}
  if [ -z "${AVER_IMAGE_REVISION:-}" ] && [ -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    echo "images: warning: the work tree has uncommitted changes; the revision label names $revision, which is not exactly what was built" >&2
  fi
  labels=(
    --label "org.opencontainers.image.source=https://github.com/aver-dev/aver"
    --label "org.opencontainers.image.revision=$revision"
    --label "org.opencontainers.image.version=$version"
    --label "org.opencontainers.image.licenses=Apache-2.0"
  )
  mkdir -p "$out"
  for name in "${release_names[@]}"; do
    stripped_binary "$name" "$profile" >/dev/null
  done
  enclave=$(stripped_binary aver-enclave "$profile")
  node=$(stripped_binary aver-node "$profile")
  list=$(tcti_modules "$enclave")
  mapfile -t modules <<<"$list"
  release_image aver-controller "$registry/aver-controller:$tag" /bin/aver-controller \
    --with-libs --compress-level "$level" "${labels[@]}" \
    "$(stripped_binary aver-controller "$profile")=/bin/aver-controller"
  release_image aver-enclave "$registry/aver-enclave:$tag" /bin/aver-enclave \
    --with-libs --compress-level "$level" "${labels[@]}" \
    "$enclave=/bin/aver-enclave" "${modules[@]}"
  list=$(tcti_modules "$node")
  mapfile -t modules <<<"$list"
  release_image aver-node "$registry/aver-node:$tag" /bin/aver-node \
    --with-libs --compress-level "$level" "${labels[@]}" --user 0:0 \
    "$node=/bin/aver-node" "${modules[@]}"
  release_image aver-stub-engine "$registry/aver-stub-engine:$tag" /bin/aver-stub-engine \
    --with-libs --compress-level "$level" "${labels[@]}" --cmd 127.0.0.1:8000 \
    "$(stripped_binary aver-stub-engine "$profile")=/bin/aver-stub-engine"
  write_release_manifests "$out" "$revision" "$profile"
  echo "images: release images in $out after $((SECONDS - start))s:"
  sed 's/^/  /' "$out/digests.txt"
  release_instructions "$out"
}

# write_release_manifests DIR [REVISION [PROFILE]] — digests.txt, images.json and
# values-images.yaml of the images in DIR (from their .ref, .digest and .id
# files). Also `scripts/images.sh --values [DIR]`.
write_release_manifests() {
  local out=$1 revision=${2:-} profile=${3:-}
  python3 - "$out" "$revision" "$profile" "${release_names[@]}" <<'PY'
import json
import os
import sys

out, revision, profile, *names = sys.argv[1:]

def read(name, ext):
    with open(os.path.join(out, f"{name}.{ext}")) as f:
        return f.read().strip()

images = []
for name in names:
    if not os.path.isfile(os.path.join(out, f"{name}.oci.tar")):
        sys.exit(f"images: {out}/{name}.oci.tar is missing: scripts/images.sh --release builds it")
    ref = read(name, "ref")
    repository, tag = ref.rsplit(":", 1)
    digest = read(name, "digest")
    images.append({
        "name": name,
        "reference": ref,
        "repository": repository,
        "tag": tag,
        "digest": digest,
        "pinned": f"{repository}@{digest}",
        "id": read(name, "id"),
        "archive": f"{name}.oci.tar",
        "size": os.path.getsize(os.path.join(out, f"{name}.oci.tar")),
        "user": "0:0" if name == "aver-node" else "65532:65532",
        "entrypoint": [f"/bin/{name}"],
    })

def write(path, text):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)

write(os.path.join(out, "digests.txt"),
      "".join(f"{i['name']} {i['reference']} {i['digest']}\n" for i in images))
doc = {"images": images}
if revision:
    doc["revision"] = revision
if profile:
    doc["profile"] = profile
write(os.path.join(out, "images.json"), json.dumps(doc, indent=2, sort_keys=True) + "\n")
by_name = {i["name"]: i for i in images}
def image_values(name, indent):
    i = by_name[name]
    pad = " " * indent
    return (f"{pad}image:\n"
            f"{pad}  repository: {i['repository']}\n"
            f"{pad}  digest: \"{i['digest']}\"\n")
write(os.path.join(out, "values-images.yaml"),
      "# Helm values for charts/aver written by scripts/images.sh: the images\n"
      "# just built, pinned by digest (the digest wins over any tag).\n"
      f"#   helm install aver charts/aver -f {os.path.join(out, 'values-images.yaml')}\n"
      "# The other images of the release, for ConfidentialModels and node images:\n"
      + "".join(f"#   {i['pinned']}\n" for i in images if i["name"] not in ("aver-controller", "aver-enclave"))
      + "controller:\n" + image_values("aver-controller", 2)
      + "enclave:\n" + image_values("aver-enclave", 2))
PY
}

release_instructions() {
  local out=$1 name ref
  echo "images: load into a node's containerd (no registry):"
  echo "  ctr -n k8s.io images import $out/NAME.oci.tar    # kind: kind load image-archive $out/NAME.oci.tar"
  echo "  ctr -n k8s.io images tag REFERENCE REPOSITORY@DIGEST    # the name a pull by digest would have created"
  echo "images: deploy with: helm install aver charts/aver -f $out/values-images.yaml"
  echo "images: a release pushes them unchanged (same digests), e.g.:"
  while read -r name ref _; do
    echo "  skopeo copy --preserve-digests oci-archive:$out/$name.oci.tar docker://$ref"
  done <"$out/digests.txt"
  echo "  (or: mkdir layout && tar -xf $out/NAME.oci.tar -C layout && crane push layout REFERENCE)"
}

# --release --check: every release image packaged twice more from the same
# binaries (in separate directories) must equal the one in release_dir byte
# for byte. This covers the packaging; the binaries themselves are rustc's
# output, the same for the same toolchain, Cargo.lock, sources and paths.
check_release_reproducible() {
  local out first second name dir
  out=$(release_dir)
  first=$(mktemp -d) second=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$first' '$second'" RETURN
  for dir in "$first" "$second"; do
    rebuild_release_images_into "$dir"
  done
  for name in "${release_names[@]}"; do
    if ! cmp -s "$first/$name.oci.tar" "$second/$name.oci.tar"; then
      echo "images: $name is not reproducible: $(cat "$first/$name.digest") vs $(cat "$second/$name.digest")" >&2
      return 1
    fi
    if ! cmp -s "$first/$name.oci.tar" "$out/$name.oci.tar"; then
      echo "images: $name differs from $out/$name.oci.tar: $(cat "$first/$name.digest") vs $(cat "$out/$name.digest")" >&2
      return 1
    fi
  done
  echo "images: release images reproducible (built twice more, byte for byte the same):"
  sed 's/^/  /' "$out/digests.txt"
}

# The release images built again into DIR with build_image (no cache), from
# the arguments recorded in release_dir.
rebuild_release_images_into() {
  local dir=$1 out name
  out=$(release_dir)
  for name in "${release_names[@]}"; do
    local -a args=()
    mapfile -d '' -t args <"$out/$name.args"
    AVER_IMAGES_OUT=$dir build_image "${args[@]}" >/dev/null
  done
}

# --check: every test image built twice (in separate directories) must come
# out byte for byte the same.
check_reproducible() {
  local first second name
  first=$(mktemp -d) second=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$first' '$second'" RETURN
  CARGO_TARGET_DIR=$first build_test_images >/dev/null
  CARGO_TARGET_DIR=$second build_test_images >/dev/null
  for name in pause busybox; do
    if ! cmp -s "$first/images/$name.oci.tar" "$second/images/$name.oci.tar"; then
      echo "images: $name is not reproducible: $(cat "$first/images/$name.digest") vs $(cat "$second/images/$name.digest")" >&2
      return 1
    fi
    if ! cmp -s "$first/images/$name.digest" "$(images_dir)/$name.digest"; then
      echo "images: $name differs from the archive in $(images_dir)" >&2
      return 1
    fi
  done
  echo "images: reproducible (pause $(cat "$first/images/pause.digest"), busybox $(cat "$first/images/busybox.digest"))"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  mkdir -p "$(images_dir)"
  # Concurrent test processes may run this at the same time.
  exec 9>"$(images_dir)/.lock"
  flock 9
  if [ "${1:-}" = "--project" ]; then
    build_project_images
    exit
  fi
  if [ "${1:-}" = "--values" ]; then
    write_release_manifests "${2:-$(release_dir)}"
    echo "images: wrote ${2:-$(release_dir)}/values-images.yaml"
    exit
  fi
  if [ "${1:-}" = "--release" ]; then
    case ${2:-} in
      "" | --check) ;;
      *) echo "usage: scripts/images.sh --release [--check]" >&2; exit 2 ;;
    esac
    # Compiling takes minutes: without the lock, which test processes wait on.
    flock -u 9
    build_release_binaries
    flock 9
    build_release_images
    if [ "${2:-}" = "--check" ]; then
      check_release_reproducible
    fi
    exit
  fi
  build_test_images
  if [ "${1:-}" = "--check" ]; then
    check_reproducible
  fi
fi
