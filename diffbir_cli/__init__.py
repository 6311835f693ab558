"""comfyui-diffbir on the command line: restore images with the shipped workflows in an in-process ComfyUI.

    python -m diffbir_cli restore INPUT... --workflow v2.1-sr --out DIR

See ``python -m diffbir_cli --help`` and the README. The package never imports pytest.
"""
