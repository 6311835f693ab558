"""Exit statuses of ``python -m diffbir_cli`` and the error that carries one.

0 done; 1 anything else; 2 usage or input error; 3 weights missing with --offline; 4 no usable ComfyUI (not set
up, COMFYUI_PATH not a ComfyUI, or a Python package it needs missing).
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_MISSING_WEIGHTS, EXIT_NO_COMFYUI = 0, 1, 2, 3, 4


class CliError(Exception):
    """A failure with its exit status; the message is one sentence that says what to do."""

    def __init__(self, message: str, code: int = EXIT_FAILURE):
        super().__init__(message)
        self.code = code
