"""Version switches: every place where asyncio's behaviour depends on the Python version."""

import sys
from asyncio import unix_events

PY312 = sys.version_info >= (3, 12)
PY313 = sys.version_info >= (3, 13)
PY314 = sys.version_info >= (3, 14)

# 3.12 gave the exception handler the context of the failed task/handle to run in.
EXCEPTION_HANDLER_RUNS_IN_CONTEXT = PY312
# 3.14 passes every keyword of create_task() through to the task factory.
CREATE_TASK_FORWARDS_KWARGS = PY314

# asyncio.DefaultEventLoopPolicy on Unix, by the private name that exists on 3.11 to 3.14: 3.14
# deprecates the public name (and warns on access), not the class.
DefaultEventLoopPolicy = unix_events._UnixDefaultEventLoopPolicy
