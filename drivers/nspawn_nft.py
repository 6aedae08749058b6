"""nftables commands run in-process through libnftables (the library the `nft` tool is built on).

Every signup reads and changes Fleet's table, and every observation reads it. Forking `nft` costs a
process start each time, which under load was the largest share of a tenant's network setup; the library
takes the same command text in this process. Where the library is missing (or `FLEET_NFT_CLI=1`), the
`nft` tool runs instead, with an argument list and the script on stdin: the results are the same.

API per libnftables(3): nft_ctx_new, nft_ctx_output_set_flags (NFT_CTX_OUTPUT_JSON), nft_ctx_buffer_output,
nft_ctx_buffer_error, nft_run_cmd_from_buffer, nft_ctx_get_output_buffer, nft_ctx_get_error_buffer,
nft_ctx_free. One context per command: nothing is shared between threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
from dataclasses import dataclass

NFT_CTX_OUTPUT_JSON = 1 << 4
_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Result:
    ok: bool
    output: str
    error: str


def _load() -> ctypes.CDLL | None:
    if os.environ.get("FLEET_NFT_CLI") == "1":
        return None
    name = ctypes.util.find_library("nftables") or "libnftables.so.1"
    try:
        library = ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None
    library.nft_ctx_new.restype = ctypes.c_void_p
    library.nft_ctx_new.argtypes = (ctypes.c_uint32,)
    library.nft_ctx_free.argtypes = (ctypes.c_void_p,)
    library.nft_ctx_output_set_flags.argtypes = (ctypes.c_void_p, ctypes.c_uint)
    library.nft_ctx_buffer_output.argtypes = (ctypes.c_void_p,)
    library.nft_ctx_buffer_error.argtypes = (ctypes.c_void_p,)
    library.nft_run_cmd_from_buffer.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
    library.nft_run_cmd_from_buffer.restype = ctypes.c_int
    library.nft_ctx_get_output_buffer.argtypes = (ctypes.c_void_p,)
    library.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    library.nft_ctx_get_error_buffer.argtypes = (ctypes.c_void_p,)
    library.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    return library


class Nft:
    """Runs nft command text: `run("list table inet fleet", json=True)`, or a whole script."""

    def __init__(self, tool: str = "nft") -> None:
        self.tool = tool
        self._library = _load()

    def run(self, commands: str, *, json: bool = False) -> Result:
        if self._library is None:
            return self._run_tool(commands, json=json)
        library = self._library
        context = library.nft_ctx_new(0)
        if not context:
            return self._run_tool(commands, json=json)
        try:
            if json:
                library.nft_ctx_output_set_flags(context, NFT_CTX_OUTPUT_JSON)
            library.nft_ctx_buffer_output(context)
            library.nft_ctx_buffer_error(context)
            code = library.nft_run_cmd_from_buffer(context, commands.encode())
            output = (library.nft_ctx_get_output_buffer(context) or b"").decode(errors="replace")
            error = (library.nft_ctx_get_error_buffer(context) or b"").decode(errors="replace")
        finally:
            library.nft_ctx_free(context)
        return Result(code == 0, output, error.strip())

    def _run_tool(self, commands: str, *, json: bool) -> Result:
        argv = [self.tool, *(["-j"] if json else []), "-f", "-"]
        try:
            done = subprocess.run(argv, input=commands, capture_output=True, text=True, timeout=_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as error:
            return Result(False, "", f"nft failed to run: {error}")
        return Result(done.returncode == 0, done.stdout, done.stderr.strip())
