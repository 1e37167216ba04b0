"""Where ``rapid.rewards.sandbox.calls`` used to live; kept so that existing imports keep working."""

from __future__ import annotations

from .sandbox.calls import SandboxedError, SandboxedFunction, SandboxedProgram, SandboxGone, open_program

__all__ = ["SandboxGone", "SandboxedError", "SandboxedFunction", "SandboxedProgram", "open_program"]
