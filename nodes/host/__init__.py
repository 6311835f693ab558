"""The shared layer under the DiffBIR node classes: everything a node needs from ComfyUI, written once.

Node modules (``nodes/*.py``) hold node classes only; they import this package and ``diffbir_core``, never each
other. One concept per module:

  schema        V3 schema helpers: categories, feature-detected fields (``advanced``, ``search_aliases``)
  images        IMAGE checks (channels, NaN, empty batches) and widget bounds
  progress      progress text in the UI and the tile progress bar with Cancel
  tiled_stage   a tiled stage declared once: its widgets, its validation, one plan-run-fall-back call
  types         payloads that travel between our nodes (DIFFBIR_STAGE1, FACE_ALIGNMENT)
  model_files   the model folders the loaders list and how a widget value becomes a path
  downloads     an official file a loader names but ComfyUI lacks, downloaded when the node runs
  model_cache   loaded networks kept between prompts, keyed by file identity
  patching      torch networks inside ComfyUI ModelPatchers (comfy.ops layers, the official half policy)
  loaders       building each network kind from a file (stage 1, ControlNet, v1 SD parts, face detector)
  stage1_runner a stage-1 network (ours or a stock upscale model) as a callable for the core pipeline
  vae           the SD 2.1 VAE checks and its (tiled) encode/decode through ComfyUI's VAE
  condition     the official condition latent of the stage-1 image
  control       the DiffBIR ControlNet as a ComfyUI CONTROL_NET
  conditioning  finding and replacing our control inside CONDITIONING lists
  model_sampling what a MODEL samples with (eps / v, zero-terminal SNR), its training schedule and sigmas
  model_function the core samplers' model function answered by ComfyUI's guided model
  guidance      restoration guidance over ComfyUI's VAE
  solver_inputs the sampler-name and solver-setting inputs shared by the two sampler nodes
  ksamplers     the official solvers as ComfyUI KSAMPLERs (stock sampler lists)
"""
