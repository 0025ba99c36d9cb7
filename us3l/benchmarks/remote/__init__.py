"""Remote devices: executors (local / OpenSSH), the ONNX Runtime agent and Jetson state."""

from .executor import Executor, LocalExecutor, SshExecutor, make_executor

__all__ = ["Executor", "LocalExecutor", "SshExecutor", "make_executor"]
