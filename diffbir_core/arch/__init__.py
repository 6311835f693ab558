"""Network architectures, one module per architecture (as spandrel does).

Every module exposes OFFICIAL_CONFIG (official hyper-parameter names) and
build(config=None) -> nn.Module whose state_dict keys are exactly the official ones.
Stage-1 modules also expose config_from_state_dict(sd); the UNet-family configs are
read from shapes by ldm_config.
"""
