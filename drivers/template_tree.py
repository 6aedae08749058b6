"""Fleet's template contract as files, for every backend: the trees the built-in templates are made of.

- `INIT_PATH` (`/fleet/init`) runs the tenant's service in the foreground; the container stops when it
  exits. The built-in one serves /srv/www with busybox httpd on $FLEET_HTTP_PORT (80).
- The busybox template is a static busybox and its applets; a Debian one is debootstrap's minbase plus a
  static busybox at /fleet/busybox for the httpd.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

from specs import PermanentError, Template

INIT_PATH = "/fleet/init"
HOST_BUSYBOX = Path("/bin/busybox")

_INIT_SCRIPT = """#!/bin/sh
# Fleet template contract: the runtime runs this as the container's service (nspawn: --as-pid2; LXD: its
# init). It must stay in the foreground: when it exits, the container stops.
name=$(hostname 2>/dev/null || echo tenant)
if [ -f /srv/www/index.html.in ]; then
    sed "s/@HOSTNAME@/$name/g" /srv/www/index.html.in > /srv/www/index.html 2>/dev/null || true
fi
busybox=/fleet/busybox
[ -x "$busybox" ] || busybox=busybox
exec "$busybox" httpd -f -p "${FLEET_HTTP_PORT:-80}" -h /srv/www
"""

_INDEX_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Fleet tenant @HOSTNAME@</title></head>
<body><h1>This is a Fleet tenant</h1><p>Container <b>@HOSTNAME@</b>, cloned from template {ref}.</p></body>
</html>
"""
_APPLET = re.compile(r"[a-z0-9_.\[-]+")
_SUITE = re.compile(r"[a-z][a-z0-9-]{0,31}")


def static_busybox() -> Path:
    """The host's busybox, if it is static (a dynamic one would need the host's libc inside the tree)."""
    if not HOST_BUSYBOX.is_file():
        raise PermanentError(f"{HOST_BUSYBOX} missing: apt-get install busybox-static", reason="ToolMissing")
    if _has_interpreter(HOST_BUSYBOX):
        raise PermanentError(f"{HOST_BUSYBOX} is dynamic: apt-get install busybox-static", reason="ToolMissing")
    return HOST_BUSYBOX


def _has_interpreter(executable: Path) -> bool:
    """True if the ELF file asks for a dynamic loader (has a PT_INTERP program header)."""
    with open(executable, "rb") as handle:
        header = handle.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:  # only 64-bit ELF hosts are supported
            return True
        endian = "<" if header[5] == 1 else ">"
        program_offset = struct.unpack_from(endian + "Q", header, 32)[0]
        entry_size, entries = struct.unpack_from(endian + "HH", header, 54)
        handle.seek(program_offset)
        table = handle.read(entry_size * entries)
    return any(struct.unpack_from(endian + "I", table, i * entry_size)[0] == 3 for i in range(entries))


def fill_busybox(tree: Path, template: Template, progress: Callable[[str], None]) -> None:
    """The built-in template: a static busybox, its applets as symlinks, a web page and /fleet/init."""
    busybox = static_busybox()
    progress("installing busybox")
    # srv/www/cgi-bin: where a tenant (and the tests' payload probes) put CGI scripts for its httpd
    for directory in ("usr/bin", "etc", "srv/www/cgi-bin", "fleet", "root", "tmp", "proc", "sys", "dev", "run", "var"):
        (tree / directory).mkdir(parents=True, exist_ok=True)
    (tree / "tmp").chmod(0o1777)
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/bin"), ("usr/sbin", "bin"), ("var/tmp", "../tmp")):
        os.symlink(target, tree / link)
    shutil.copy2(busybox, tree / "usr/bin/busybox")
    try:
        listed = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as error:
        raise PermanentError(f"cannot list {busybox}'s applets: {error}", reason="ToolMissing") from error
    applets = [a for a in listed.stdout.split() if _APPLET.fullmatch(a) and a != "busybox"]
    for applet in applets:
        os.symlink("busybox", tree / "usr/bin" / applet)
    progress(f"linked {len(applets)} applets")
    etc = tree / "etc"
    (etc / "os-release").write_text(
        'NAME="Fleet busybox"\nID=fleet-busybox\n'
        f'VERSION_ID="{template.version}"\nPRETTY_NAME="Fleet busybox template {template.ref}"\n'
    )
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    (etc / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (etc / "hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost\n")
    (etc / "machine-id").write_text("")  # empty: the runtime fills in the container's id
    write_fleet_files(tree, template)


def fill_debootstrap(tree: Path, template: Template, suite: str, progress: Callable[[str], None]) -> None:
    """A Debian template with debootstrap (minbase), plus /fleet/init and a static busybox for its httpd."""
    if shutil.which("debootstrap") is None:
        raise PermanentError("debootstrap not installed: apt-get install debootstrap", reason="ToolMissing")
    if not _SUITE.fullmatch(suite):
        raise PermanentError(f"invalid Debian suite {suite!r}", reason="InvalidTemplate")
    busybox = static_busybox()
    command = ["debootstrap", "--variant=minbase", suite, str(tree)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        assert process.stdout is not None
        tail: list[str] = []
        for line in process.stdout:
            progress(line.rstrip())
            tail = [*tail[-4:], line.rstrip()]
    if process.returncode != 0:
        raise PermanentError(f"debootstrap {suite} failed: {' | '.join(tail)}", reason="BuildFailed")
    shutil.copy2(busybox, tree / "fleet-busybox.tmp")
    (tree / "fleet").mkdir(exist_ok=True)
    os.rename(tree / "fleet-busybox.tmp", tree / "fleet/busybox")
    (tree / "srv/www").mkdir(parents=True, exist_ok=True)
    write_fleet_files(tree, template)


def write_fleet_files(tree: Path, template: Template) -> None:
    """/fleet/init and the web page it serves (the page carries the container's hostname once it runs)."""
    init = tree / INIT_PATH.lstrip("/")
    init.parent.mkdir(exist_ok=True)
    init.write_text(_INIT_SCRIPT)
    init.chmod(0o755)
    www = tree / "srv/www"
    www.mkdir(parents=True, exist_ok=True)
    page = _INDEX_PAGE.format(ref=template.ref)
    (www / "index.html.in").write_text(page)
    (www / "index.html").write_text(page.replace("@HOSTNAME@", "tenant"))
