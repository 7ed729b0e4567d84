"""Shell commands in a bubblewrap sandbox, one writable ``/workspace`` per computer.

``bwrap`` builds the command line, ``workspaces`` owns the host directories
behind ``/workspace``, ``runner`` starts a command and streams its output.
"""

from opencone.drivers.sandbox.bwrap import SANDBOX_GID, SANDBOX_UID, WORKSPACE, display_number
from opencone.drivers.sandbox.runner import Execution, Exited, Output, Sandbox, SandboxUnavailable
from opencone.drivers.sandbox.workspaces import Workspaces, choose_root

__all__ = [
    "SANDBOX_GID", "SANDBOX_UID", "WORKSPACE", "Execution", "Exited", "Output", "Sandbox", "SandboxUnavailable",
    "Workspaces", "choose_root", "display_number",
]
