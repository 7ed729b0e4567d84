"""What a command, its cwd and its environment can carry to the kernel.

They become C strings of an ``execve``: no NUL inside, UTF-8 (so no lone
surrogate), each string at most ``MAX_ARG_STRLEN`` bytes, and the command line
and environment together within ``ARG_MAX`` (2 MiB with the usual 8 MiB stack).
A request is checked against these where it is validated (``ExecRequest`` in
core/exec.py for /exec, ``RunCommand`` in core/actions.py for the ``debug``
action), so what the kernel would refuse is a 422 that names the limit, not an
``E2BIG`` from deep inside the sandbox.
"""

from __future__ import annotations

MAX_ARG_STRLEN = 128 * 1024  # one argv or envp string, its NUL included (Linux: 32 pages)
MAX_COMMAND_BYTES = MAX_ARG_STRLEN - 1
MAX_ENV_VARS = 1024
# every "KEY=value\0" string plus its pointer: half of ARG_MAX, the rest is left for the
# command (at most MAX_COMMAND_BYTES) and for what the sandbox adds to both
MAX_ENV_BYTES = 1024 * 1024
_POINTER = 8


def utf8(v: str, what: str = "") -> bytes:
    """``v`` as the bytes the kernel gets; ValueError (about ``what``) if it has a NUL or a lone surrogate."""
    prefix = f"{what} " if what else ""
    if "\x00" in v:
        raise ValueError(f"{prefix}must not contain NUL characters (a kernel string ends at the first one)")
    try:
        return v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{prefix}must be valid Unicode (it has a lone UTF-16 surrogate)") from None


def check_command(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    if len(utf8(v)) > MAX_COMMAND_BYTES:
        raise ValueError(f"must be at most {MAX_COMMAND_BYTES} bytes of UTF-8 (the kernel's limit for one "
                         "argument)")
    return v


def check_cwd(v: str) -> str:
    utf8(v)
    return v


def check_env(env: dict[str, str]) -> dict[str, str]:
    """The environment a command may be given, or ValueError naming the variable or the limit."""
    if len(env) > MAX_ENV_VARS:
        raise ValueError(f"has {len(env)} variables; at most {MAX_ENV_VARS} are allowed")
    total = 0
    for key, value in env.items():
        name = repr(key[:64])  # (repr escapes what could not be sent back: a surrogate, a NUL)
        if not key or "=" in key:
            raise ValueError(f"key {name} must be a non-empty name without '='")
        entry = len(utf8(key, f"key {name}")) + 1 + len(utf8(value, f"the value of {name}")) + 1
        if entry > MAX_ARG_STRLEN:
            raise ValueError(f"{name}: KEY=value is {entry - 1} bytes; at most {MAX_ARG_STRLEN - 1} are "
                             "allowed (the kernel's limit for one environment string)")
        total += entry + _POINTER
    if total > MAX_ENV_BYTES:
        raise ValueError(f"is {total} bytes in all (each KEY=value, its NUL and a pointer); at most "
                         f"{MAX_ENV_BYTES} are allowed (half of the kernel's ARG_MAX, shared with the command)")
    return env
