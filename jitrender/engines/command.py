"""The ``command`` engine: a command template, as a string (split like a shell would, no
shell involved) or an argv list, with ``{frame}``-style placeholders filled in."""

from __future__ import annotations

import shlex

from jitrender.engines import Invocation, StageCall, register_engine
from jitrender.errors import ConfigError


@register_engine("command")
def command_engine(call: StageCall) -> Invocation:
    if call.command is None:
        raise ConfigError(f"stages.{call.name}: engine 'command' needs a 'command'")
    if isinstance(call.command, str):
        try:
            parts = shlex.split(call.command)
        except ValueError as exc:
            raise ConfigError(f"stages.{call.name}.command: {exc}") from None
    else:
        parts = list(call.command)
    argv = [call.expand(part) for part in parts]
    env = {key: call.expand(value) for key, value in call.env.items()}
    return Invocation(argv, env, call.workspace.root)
