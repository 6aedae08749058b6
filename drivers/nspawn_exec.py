"""`fleet exec` for the nspawn driver: run a command inside a running tenant as its payload runs, never as the host.

A fresh helper interpreter (`python -I -S`, a few tens of ms; never a fork of the threaded operator) is
started with the command's streams (pipes; with a terminal, see below).
The helper, still host root:

1. opens the namespaces of the container's init (nspawn's stub init, the payload's parent: the child of
   the tenant's verified nspawn process in another pid namespace) and checks it is still that child;
2. reads the init's seccomp filters (`PTRACE_SECCOMP_GET_FILTER`; it stops the init for well under a
   millisecond): nspawn's own syscall filters and Fleet's (`nspawn_seccomp`) below them, so the command
   gets exactly the filters the payload has, not a copy that could drift from nspawn's; and its resource
   limits (`prlimit`, every RLIMIT_*) and `oom_score_adj`, not the operator's;
3. joins the init's pid namespace and forks. The child moves itself into the init's cgroups in every
   hierarchy (`cgroup.procs`: the tenant's cpu, memory, pids, blkio limits hold it), takes the init's
   resource limits and `oom_score_adj` while it is still host root (raising a hard limit or lowering the
   score needs CAP_SYS_RESOURCE in the host's user namespace), joins the network, cgroup, ipc, uts and
   mount namespaces, then the tenant's user namespace last, becomes uid/gid 0 there
   (host uid = the tenant's range), drops the bounding set to the init's and sets its inheritable set,
   clears ambient capabilities, sets no_new_privs and a parent-death SIGKILL, installs the filters (oldest
   first) and execs the command with a clean environment, looked up on the tenant's PATH.

With a terminal, the child opens it in the tenant's own devpts (as the tenant's root, so `/dev/pts/N` exists
inside and `tty` names it), sends the master to the operator over a socket pair, and makes the slave its
controlling terminal; resizing the master sends SIGWINCH to the command.

The helper waits and exits with the command's code (126: could not enter or run; 127: not found). Killing
the helper kills the command (parent-death signal). Nothing passes through a shell.

What it must never do: act in the operator process, leave a host descriptor open across the exec, or
enter a process it has not verified as the tenant's container init.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from drivers.exec_process import ExecProcess, ExecRequest, PopenExec
from specs import PermanentError, TransientError

INIT_WAIT_S = 2.0
TERMINAL_WAIT_S = 10.0
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Arguments: init pid, nspawn pid, the terminal ("-" for none, else "SOCKET-FD:ROWS:COLS"), the number of
# cgroup.procs files, those files, the number of environment entries, those entries (KEY=VALUE), the command.
HELPER = r"""
import ctypes, os, signal, socket, stat, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.prlimit.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
NAMESPACES = (("net", 0x40000000), ("cgroup", 0x02000000), ("ipc", 0x08000000), ("uts", 0x04000000),
              ("mnt", 0x00020000), ("user", 0x10000000))
CLONE_NEWPID = 0x20000000
RLIM_NLIMITS = 16  # RLIMIT_CPU (0) to RLIMIT_RTTIME (15): every line of /proc/PID/limits, RLIMIT_LOCKS too

def fail(code, message):
    os.write(2, ("fleet exec: %s\n" % message).encode("utf-8", "replace"))
    os._exit(code)

def check(result, doing):
    if result != 0:
        raise OSError(ctypes.get_errno(), "%s failed: %s" % (doing, os.strerror(ctypes.get_errno())))

def status_of(proc):
    fd = os.open("status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
    try:
        text = os.read(fd, 65536).decode()
    finally:
        os.close(fd)
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)

class Late(Exception):
    pass

def late(signum, frame):
    raise Late("the container's init did not stop for its filters to be read within 5 s")

def filters_of(pid):
    # PTRACE_SEIZE, PTRACE_INTERRUPT, wait for the stop (5 s at most), PTRACE_SECCOMP_GET_FILTER each,
    # PTRACE_DETACH, giving back a signal that was about to be delivered when it stopped.
    check(libc.ptrace(0x4206, pid, None, None), "ptrace(PTRACE_SEIZE)")
    found = []
    pending = 0
    signal.signal(signal.SIGALRM, late)
    signal.alarm(5)
    try:
        check(libc.ptrace(0x4207, pid, None, None), "ptrace(PTRACE_INTERRUPT)")
        _, status = os.waitpid(pid, 0x40000000)  # __WALL
        signal.alarm(0)
        if os.WIFSTOPPED(status) and status >> 16 == 0 and os.WSTOPSIG(status) != signal.SIGTRAP:
            pending = os.WSTOPSIG(status)  # a signal-delivery-stop: the signal goes back at detach
        index = 0
        while True:
            count = libc.ptrace(0x420C, pid, ctypes.c_void_p(index), None)
            if count < 0:
                if ctypes.get_errno() == 2:  # ENOENT: no filter at this index
                    break
                raise OSError(ctypes.get_errno(), "ptrace(PTRACE_SECCOMP_GET_FILTER) failed")
            buffer = ctypes.create_string_buffer(count * 8)
            if libc.ptrace(0x420C, pid, ctypes.c_void_p(index), buffer) != count:
                raise OSError(ctypes.get_errno(), "ptrace(PTRACE_SECCOMP_GET_FILTER) failed")
            found.append(buffer.raw)
            index += 1
    finally:
        signal.alarm(0)
        libc.ptrace(17, pid, None, ctypes.c_void_p(pending))  # PTRACE_DETACH
    return found

class Limit(ctypes.Structure):
    _fields_ = [("soft", ctypes.c_uint64), ("hard", ctypes.c_uint64)]

def limits_of(pid):
    found = []
    for resource in range(RLIM_NLIMITS):
        limit = Limit()
        check(libc.prlimit(pid, resource, None, ctypes.byref(limit)), "prlimit(%d)" % resource)
        found.append((resource, limit))
    return found

def take_limits(limits):
    for resource, limit in limits:
        if libc.prlimit(0, resource, ctypes.byref(limit), None) == 0:
            continue
        if ctypes.get_errno() != 1:  # EPERM: a hard limit above ours, and no CAP_SYS_RESOURCE to raise it
            check(-1, "setrlimit(%d)" % resource)
        ours = Limit()
        check(libc.prlimit(0, resource, None, ctypes.byref(ours)), "getrlimit(%d)" % resource)
        hard = min(limit.hard, ours.hard)  # ours where it is lower: never more than the init
        lower = Limit(min(limit.soft, hard), hard)
        check(libc.prlimit(0, resource, ctypes.byref(lower), None), "setrlimit(%d)" % resource)

def take_oom_score_adj(score):
    try:
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write(str(score))
    except PermissionError:  # below ours, without CAP_SYS_RESOURCE: ours stays, more likely to be killed
        pass

def oom_score_adj_of(proc):
    fd = os.open("oom_score_adj", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
    try:
        return int(os.read(fd, 64))
    finally:
        os.close(fd)

class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

def install(code):
    program = ctypes.create_string_buffer(code, len(code))
    prog = Prog(len(code) // 8, ctypes.cast(program, ctypes.c_void_p))
    check(libc.prctl(22, 2, ctypes.byref(prog), 0, 0), "prctl(PR_SET_SECCOMP)")

def enter(fds, procs, status, filters, limits, oom_score_adj, cap_last, tty, env, command):
    for path in procs:
        with open(path, "w") as handle:
            handle.write("0")
    # Still host root, in the host's /proc: the init's limits may be above the operator's and its score
    # below (both need CAP_SYS_RESOURCE in the host's user namespace, gone once in the tenant's).
    take_limits(limits)
    take_oom_score_adj(oom_score_adj)
    for name, flag in NAMESPACES:
        check(libc.setns(fds[name], flag), "setns(%s)" % name)
        os.close(fds[name])
    os.chdir("/")
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    bounding, inheritable = int(status["CapBnd"], 16), int(status["CapInh"], 16)
    for cap in range(cap_last + 1):
        if not bounding >> cap & 1:
            check(libc.prctl(24, cap, 0, 0, 0), "prctl(PR_CAPBSET_DROP, %d)" % cap)  # PR_CAPBSET_DROP
    check(libc.prctl(47, 4, 0, 0, 0), "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
    header = struct.pack("Ii", 0x20080522, 0)
    data = struct.pack("6I", bounding & 0xFFFFFFFF, bounding & 0xFFFFFFFF, inheritable & 0xFFFFFFFF,
                       bounding >> 32, bounding >> 32, inheritable >> 32)
    check(libc.capset(header, data), "capset")
    if tty:
        terminal(*tty)
    check(libc.prctl(38, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    check(libc.prctl(1, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")  # the uid change cleared it
    if os.getppid() != 0:  # the helper (outside this pid namespace: 0) died before: reparented to the init
        os._exit(126)
    for code in reversed(filters):  # index 0 is the newest: install the oldest first
        install(code)
    # The tenant's PATH, searched here: nothing may be imported once inside the tenant's mounts.
    paths = [command[0]] if "/" in command[0] else [d + "/" + command[0] for d in env["PATH"].split(":")]
    refused = None
    for path in paths:
        try:
            os.execve(path, command, env)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as error:
            refused = refused or error
    if refused is not None:
        fail(126, "%s: %s" % (command[0], refused.strerror))
    fail(127, "%s: command not found in the tenant" % command[0])

def terminal(channel, rows, cols):
    # A pseudo-terminal of the tenant's own devpts (its /dev/pts/N exists inside), opened as the tenant's
    # root; the master goes to the operator over `channel`, the slave becomes this process's terminal.
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK)
    if not stat.S_ISCHR(os.fstat(master).st_mode):
        raise OSError("the tenant's /dev/ptmx is not a terminal multiplexer")
    os.set_blocking(master, True)
    check(libc.ioctl(master, 0x40045431, ctypes.byref(ctypes.c_int(0))), "ioctl(TIOCSPTLCK)")
    slave = libc.ioctl(master, 0x5441, os.O_RDWR | os.O_NOCTTY)  # TIOCGPTPEER: no path to look up
    if slave < 0:
        raise OSError(ctypes.get_errno(), "ioctl(TIOCGPTPEER) failed")
    check(libc.ioctl(master, 0x5414, struct.pack("HHHH", rows, cols, 0, 0)), "ioctl(TIOCSWINSZ)")
    sock = socket.socket(fileno=channel)
    sock.sendmsg([b"m"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", master))])
    sock.close()
    os.close(master)
    os.setsid()
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(slave)
    check(libc.ioctl(0, 0x540E, 0), "ioctl(TIOCSCTTY)")

def main(args):
    init_pid, nspawn_pid = int(args[0]), int(args[1])
    tty = None if args[2] == "-" else tuple(int(part) for part in args[2].split(":"))
    count = int(args[3]); procs = args[4:4 + count]; rest = args[4 + count:]
    count = int(rest[0]); entries = rest[1:1 + count]; command = rest[1 + count:]
    env = dict(entry.split("=", 1) for entry in entries)
    with open("/proc/sys/kernel/cap_last_cap") as handle:
        cap_last = int(handle.read())
    proc = os.open("/proc/%d" % init_pid, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    fds = {name: os.open("ns/" + name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc) for name, _ in NAMESPACES}
    pid_ns = os.open("ns/pid", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
    status = status_of(proc)
    if int(status["PPid"]) != nspawn_pid:
        fail(126, "the container's init is gone (the tenant stopped?)")
    filters = filters_of(init_pid)
    limits, oom_score_adj = limits_of(init_pid), oom_score_adj_of(proc)
    status = status_of(proc)
    if int(status["PPid"]) != nspawn_pid:  # still the same process: its namespaces and limits are the ones we hold
        fail(126, "the container's init is gone (the tenant stopped?)")
    os.close(proc)
    check(libc.setns(pid_ns, CLONE_NEWPID), "setns(pid)")
    os.close(pid_ns)
    child = os.fork()
    if child == 0:
        try:
            check(libc.prctl(1, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
            enter(fds, procs, status, filters, limits, oom_score_adj, cap_last, tty, env, command)
        except BaseException as error:
            fail(126, "could not enter the tenant: %s" % (error,))
        os._exit(126)
    for fd in fds.values():
        os.close(fd)
    for number in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(number, signal.SIG_IGN)
    _, code = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(code)
    os._exit(128 - code if code < 0 else code)

try:
    main(sys.argv[1:])
except BaseException as error:
    fail(126, "could not enter the tenant: %r" % (error,))
"""


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def container_init(nspawn_pid: int, members: set[int]) -> int | None:
    """The container's init, once it is settled: the one child of the tenant's nspawn among the tenant's
    cgroup members that runs in a pid namespace of its own, with no_new_privs set, and that has started the
    payload. Until the payload runs, nspawn is still confining its init (capabilities, filters, cgroups):
    entering it then would copy a half-made confinement, so it is not the init yet."""
    try:
        host_pid_namespace = os.stat(f"/proc/{nspawn_pid}/ns/pid").st_ino
    except OSError:
        return None
    parents = {pid: _status(pid).get("PPid") for pid in members - {nspawn_pid}}
    for pid, parent in sorted(parents.items()):
        if parent != str(nspawn_pid) or _status(pid).get("NoNewPrivs") != "1":
            continue
        if str(pid) not in parents.values():  # no payload yet
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{pid}/ns/pid").st_ino != host_pid_namespace:
                return pid
    return None


def _cgroup_mounts(mountinfo: str) -> tuple[dict[frozenset[str], str], str | None]:
    """Each cgroup v1 hierarchy's mount point by its controllers (or name=), and the cgroup2 mount."""
    hierarchies: dict[frozenset[str], str] = {}
    unified = None
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3 or fields[3] != "/":
            continue
        if tail[0] == "cgroup2" and unified is None:
            unified = fields[4]
        elif tail[0] == "cgroup":
            hierarchies.setdefault(frozenset(tail[2].split(",")), fields[4])
    return hierarchies, unified


def cgroup_procs_files(init_pid: int, tenant_dirs: list[Path], mountinfo: str | None = None) -> list[str]:
    """The `cgroup.procs` of every cgroup the init is in, as host paths. Where Fleet keeps a tenant cgroup
    in a hierarchy (`tenant_dirs`), the init's must be at or below it: anything else is refused."""
    hierarchies, unified = _cgroup_mounts(mountinfo if mountinfo is not None else
                                          Path("/proc/self/mountinfo").read_text())
    try:
        lines = Path(f"/proc/{init_pid}/cgroup").read_text().splitlines()
    except OSError as error:
        raise TransientError(f"could not read the cgroups of the container's init: {error}") from error
    files = []
    for line in lines:
        _number, controllers, path = line.split(":", 2)
        if controllers:
            wanted = set(controllers.split(","))
            mount = next((point for options, point in hierarchies.items() if wanted <= options), None)
        else:
            mount = unified
        if mount is None:
            continue
        directory = Path(mount) / path.lstrip("/")
        if ".." in Path(path).parts:
            raise PermanentError(f"the container's init is in an unexpected cgroup {path}", reason="ExecRefused")
        owner = [tenant for tenant in tenant_dirs if tenant.parent.parent == Path(mount)]
        if owner and not any(directory == d or d in directory.parents for d in owner):
            raise PermanentError(f"the container's init is in cgroup {directory}, outside the tenant's",
                                 reason="ExecRefused")
        files.append(str(directory / "cgroup.procs"))
    return files


def environment(tenant: str, request: ExecRequest) -> list[str]:
    """A clean environment: nothing of the operator's (tokens, paths) reaches the tenant."""
    entries = {"PATH": PATH, "HOME": "/root", "USER": "root", "LOGNAME": "root", "FLEET_TENANT": tenant,
               "container": "systemd-nspawn"}
    if request.tty:
        entries["TERM"] = request.term
    return [f"{key}={value}" for key, value in entries.items()]


def spawn(tenant: str, request: ExecRequest, *, nspawn_pid: int, members: Callable[[], set[int]],
          tenant_dirs: list[Path]) -> ExecProcess:
    """Start the helper for `request` in `tenant`'s running container (nspawn at `nspawn_pid`, verified by
    the caller); returns the command's host-side ends."""
    deadline = time.monotonic() + INIT_WAIT_S
    init = container_init(nspawn_pid, members())
    while init is None and time.monotonic() < deadline:  # nspawn forks its init a moment after it starts
        time.sleep(0.01)
        init = container_init(nspawn_pid, members())
    if init is None:
        raise TransientError(f"tenant {tenant}'s container has no init yet (starting or stopping)")
    procs = cgroup_procs_files(init, tenant_dirs)
    env = environment(tenant, request)
    arguments = [str(len(procs)), *procs, str(len(env)), *env, *request.command]
    if request.tty:
        return _spawn_terminal(tenant, request, [str(init), str(nspawn_pid)], arguments)
    argv = [sys.executable, "-I", "-S", "-c", HELPER, str(init), str(nspawn_pid), "-", *arguments]
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               close_fds=True, start_new_session=True, env={})
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    # The descriptors are handed over: the Popen's file objects must not close them behind our back.
    stdin, stdout, stderr = (os.dup(stream.fileno()) for stream in (process.stdin, process.stdout, process.stderr))
    for stream in (process.stdin, process.stdout, process.stderr):
        stream.close()
    return PopenExec(process, stdin=stdin, stdout=stdout, stderr=stderr, tty=False)


def _spawn_terminal(tenant: str, request: ExecRequest, head: list[str], arguments: list[str]) -> ExecProcess:
    """With a terminal: the helper opens it in the tenant's own devpts and sends its master back here."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        channel = f"{theirs.fileno()}:{request.rows}:{request.cols}"
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", HELPER, *head, channel, *arguments], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=(theirs.fileno(),), close_fds=True,
            start_new_session=True, env={},
        )
    finally:
        theirs.close()
    assert process.stderr is not None
    try:
        ours.settimeout(TERMINAL_WAIT_S)
        try:
            _message, fds, _flags, _address = socket.recv_fds(ours, 1, 1)
        except (TimeoutError, OSError):
            fds = []
    finally:
        ours.close()
    if not fds:
        process.kill()
        why = process.stderr.read().decode(errors="replace").strip()
        process.wait()
        process.stderr.close()
        raise TransientError(f"could not open a terminal in tenant {tenant}: {why or 'no answer from the helper'}")
    master = fds[0]
    for extra in fds[1:]:
        os.close(extra)
    process.stderr.close()  # the helper's own errors now go to the terminal
    if not stat.S_ISCHR(os.fstat(master).st_mode):
        os.close(master)
        process.kill()
        process.wait()
        raise PermanentError(f"tenant {tenant}'s terminal is not a character device", reason="ExecRefused")
    return PopenExec(process, stdin=master, stdout=master, stderr=None, tty=True)
