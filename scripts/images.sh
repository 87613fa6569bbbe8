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
# Writes $(images_dir)/NAME.{oci.tar,digest,id,ref}: a single-layer image
# named REF whose entrypoint is ENTRYPOINT (a path inside the image; extra
# arguments with --cmd) and default user 65532:65532. Leaves the archive
# untouched (same mtime) when its content would not change.
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
build_image() {
  if [ $# -lt 3 ]; then
    echo "usage: build_image NAME REF ENTRYPOINT [--with-libs] [--symlink L=T] [--dir D] [--env K=V] [--cmd ARG] [--user U] [--workdir W] FILE..." >&2
    return 2
  fi
  local out
  out=$(images_dir)
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
        "Labels": {"org.opencontainers.image.title": name},
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
  out=$(images_dir)
  for arg in "${@:4}"; do
    if [ "$expect_value" = 1 ]; then expect_value=0; continue; fi
    case $arg in
      --with-libs) with_libs=1 ;;
      --symlink | --dir | --env | --cmd | --user | --workdir | --compress-level) expect_value=1 ;;
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

# A workspace binary from $(target_dir)/PROFILE without its debug information
# (objcopy --strip-debug is deterministic; a debug build's DWARF is most of
# its size), copied again only when the build is newer.
stripped_binary() {
  local bin=$1 profile=${AVER_IMAGES_PROFILE:-debug} src dest
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
  build_test_images
  if [ "${1:-}" = "--check" ]; then
    check_reproducible
  fi
fi
