"""Gymnasium environments over opencone computers (``pip install 'opencone[gym]'``).

``ComputerEnv`` (a Gymnasium ``Env``), ``AsyncComputerEnv`` (the same with ``await``), and
``ComputerVectorEnv`` (a Gymnasium ``VectorEnv`` stepping many computers concurrently from one
process). Actions: the shared schema (``{"action": "click", "ref": "e5"}`` or pixels), BrowserGym
strings (``"click('e5')"``) or OSWorld ``computer_13`` dicts. A ``Task`` plugs in a benchmark.
"""

from opencone.gym.adapters import AdapterError, BrowserGymAdapter, OSWorldAdapter, Translated
from opencone.gym.async_env import AsyncComputer, AsyncComputerEnv
from opencone.gym.core import EnvConfig, Task
from opencone.gym.env import Computer, ComputerEnv, ServerError
from opencone.gym.spaces import ActionSpace, Unicode
from opencone.gym.vector import ComputerVectorEnv

__all__ = ["ActionSpace", "AdapterError", "AsyncComputer", "AsyncComputerEnv", "BrowserGymAdapter", "Computer",
           "ComputerEnv", "ComputerVectorEnv", "EnvConfig", "OSWorldAdapter", "ServerError", "Task", "Translated",
           "Unicode"]
