"""DiffBIR Prompt in a real ComfyUI: a caption joined with the official positive prompt and both prompts encoded as
the official OpenCLIP embedder encodes them, through the user's CLIP.

The official embedder here is `diffbir_core.arch.clip_text` (the OpenCLIP text tower, penultimate block +
ln_final) with the tiny SD 2.1's text-tower weights, fed `open_clip.tokenize`'s window: start token, the text's
first 75 BPE tokens, end token, zeros. The BPE is the CLIP vocabulary ComfyUI ships (the one OpenCLIP uses; a
known sentence pins its ids).
"""

import pytest
import torch
from tiny_models import TINY_CLIP, TINY_SD21_NAME

from diffbir_core.arch import clip_text
from diffbir_core.prompts import V2_NEGATIVE, V21_NEGATIVE, V21_POSITIVE, join_caption

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.one_thread

START, END = 49406, 49407
# a LLaVA-style caption long enough that, joined with the official positive prompt, it passes 75 tokens
CAPTION = ("A weathered wooden fishing boat rests on a pebbled beach at low tide, its blue paint peeling around the "
           "hull, coiled ropes and a rusted anchor beside it, gulls standing on the wet stones and low grey clouds "
           "over a calm sea")


@pytest.fixture(scope="module")
def clip(comfy_host, model_files):
    """ComfyUI's own CLIP of the tiny SD 2.1, in float32 like the official fp32 run (Load Checkpoint's CLIP computes
    in float16 on a CPU: 1.4e-3 from the float32 tower for any prompt, long or short)."""
    import comfy.sd

    out = comfy.sd.load_checkpoint_guess_config(str(model_files / "checkpoints" / TINY_SD21_NAME), output_vae=False,
                                                output_clip=True, te_model_options={"dtype": torch.float32})
    return out[1]


@pytest.fixture(scope="module")
def official(clip, model_files):
    """text -> the official embedder's context (1, 77, width) for the tiny SD 2.1, and its token list."""
    from safetensors.torch import load_file

    sd = load_file(str(model_files / "checkpoints" / TINY_SD21_NAME))
    encoder = clip_text.build(TINY_CLIP).eval()
    encoder.load_state_dict({k[len("cond_stage_model."):]: v for k, v in sd.items()
                             if k.startswith("cond_stage_model.")})
    bpe = clip.tokenizer.clip_h.tokenizer  # ComfyUI's CLIP tokenizer (transformers, the OpenCLIP vocabulary)

    def tokenize(text):
        """open_clip.tokenize: [sot] + bpe + [eot], cut to 77 with the last set to eot, zero padded."""
        tokens = [START, *bpe(text, add_special_tokens=False)["input_ids"], END]
        if len(tokens) > 77:
            tokens = tokens[:77]
            tokens[-1] = END
        return torch.tensor([tokens + [0] * (77 - len(tokens))])

    def embed(text):
        with torch.no_grad():
            return encoder(tokenize(text))

    embed.tokenize = tokenize
    embed.bpe = bpe
    return embed


def run_node(comfy_host, clip, caption, positive=V21_POSITIVE, negative=V21_NEGATIVE):
    return comfy_host.node_classes["DiffBIRPrompt"]().execute(clip, caption, positive, negative)


def test_registered_with_the_official_defaults(comfy_host):
    info = comfy_host.node_info("DiffBIRPrompt")
    assert info["display_name"] == "DiffBIR Prompt" and info["category"] == "DiffBIR/conditioning"
    required = info["input"]["required"]
    assert required["positive_prompt"][1]["default"] == V21_POSITIVE
    assert required["negative_prompt"][1]["default"] == V21_NEGATIVE
    assert required["caption"][1]["default"] == "" and required["caption"][1]["multiline"]
    assert info["output"] == ["CONDITIONING", "CONDITIONING", "STRING", "STRING"]


def test_tokenizer_is_the_openclip_vocabulary(official):
    assert official.tokenize("a photo of a cat")[0, :7].tolist() == [START, 320, 1125, 539, 320, 2368, END]


def test_caption_joins_the_positive_prompt_as_officially():
    assert join_caption("a cat", V21_POSITIVE) == "a cat, " + V21_POSITIVE
    assert join_caption("", V21_POSITIVE) == V21_POSITIVE
    assert join_caption("a cat", "") == "a cat"
    assert join_caption("", "") == ""


def test_a_long_caption_conditions_as_the_official_embedder(comfy_host, clip, official):
    """Caption + the official positive prompt pass 75 tokens: the node encodes exactly the official window (the
    tokens beyond it dropped); the stock CLIP Text Encode encodes two windows and conditions differently."""
    import nodes

    text = join_caption(CAPTION, V21_POSITIVE)
    assert len(official.bpe(text, add_special_tokens=False)["input_ids"]) > 100
    positive, negative, positive_text, report = run_node(comfy_host, clip, CAPTION)
    assert positive_text == text
    got, want = positive[0][0], official(text)
    assert got.shape == want.shape == (1, 77, TINY_CLIP["width"])
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert torch.allclose(negative[0][0], official(V21_NEGATIVE), atol=1e-5)
    assert "dropped" in report.splitlines()[0] and "75 encoded" in report.splitlines()[0]

    stock = nodes.CLIPTextEncode().encode(clip, text)[0][0][0]
    assert stock.shape[1] == 2 * 77  # ComfyUI's chunked encode: a second window, every token reaches the model
    # (its first window is the official one here: the tokens beyond it are what the stock encode adds)
    assert torch.allclose(stock[:, :77], want, atol=1e-5)


def test_tokens_beyond_the_window_never_reach_the_model(comfy_host, clip):
    """Changing the text after the 75th token changes nothing; changing it before does."""
    first = run_node(comfy_host, clip, CAPTION)[0][0][0]
    tail_changed = run_node(comfy_host, clip, CAPTION, positive=V21_POSITIVE.replace("perfect", "flawless"))[0][0][0]
    head_changed = run_node(comfy_host, clip, CAPTION.replace("boat", "ship"))[0][0][0]
    assert torch.equal(first, tail_changed)
    assert (first - head_changed).abs().max() > 1e-4


def test_brackets_are_text_not_weights(comfy_host, clip, official):
    """(word:1.5) is ComfyUI's weight syntax; the official tokenizer reads the brackets as text."""
    import nodes

    text = "a (red:1.5) car, \\(escaped\\) and a \\ backslash"
    positive = run_node(comfy_host, clip, text, positive="")[0][0][0]
    assert torch.allclose(positive, official(text), atol=1e-5)
    assert (nodes.CLIPTextEncode().encode(clip, text)[0][0][0] - positive).abs().max() > 1e-4


def test_v2_recipe_and_empty_prompts(comfy_host, clip, official):
    positive, negative, positive_text, report = run_node(comfy_host, clip, "", "", V2_NEGATIVE)
    assert positive_text == ""
    assert torch.allclose(positive[0][0], official(""), atol=1e-5)
    assert torch.allclose(negative[0][0], official(V2_NEGATIVE), atol=1e-5)
    assert report.splitlines() == ["positive: empty", f"negative: "
                                   f"{len(official.bpe(V2_NEGATIVE, add_special_tokens=False)['input_ids'])} tokens, "
                                   "all encoded"]
    assert "pooled_output" in positive[0][1]


def test_without_a_caption_the_default_prompts_encode_as_clip_text_encode(comfy_host, clip):
    """The official default prompts fit one window (53 and 62 tokens) and hold no brackets: the shipped workflows'
    CLIP Text Encode nodes already condition officially; a caption is where DiffBIR Prompt is needed."""
    import nodes

    positive, negative, *_ = run_node(comfy_host, clip, "")
    assert torch.equal(positive[0][0], nodes.CLIPTextEncode().encode(clip, V21_POSITIVE)[0][0][0])
    assert torch.equal(negative[0][0], nodes.CLIPTextEncode().encode(clip, V21_NEGATIVE)[0][0][0])


def test_load_checkpoints_clip_encodes_the_official_window(comfy_host, clip, official, model_files):
    """With the CLIP of the stock Load Checkpoint (float16 on a CPU) the node encodes the very tokens of
    open_clip.tokenize: the same result as that CLIP's encode of those tokens."""
    import nodes

    stock_clip = nodes.CheckpointLoaderSimple().load_checkpoint(TINY_SD21_NAME)[1]
    text = join_caption(CAPTION, V21_POSITIVE)
    tokens = {"h": [[(int(t), 1.0) for t in official.tokenize(text)[0]]]}
    want = stock_clip.encode_from_tokens(tokens)
    assert torch.equal(run_node(comfy_host, stock_clip, CAPTION)[0][0][0], want)


def test_runs_in_a_graph_into_lacontrolnet_apply(comfy_host, model_files):
    """In a prompt: Load Checkpoint's CLIP -> DiffBIR Prompt -> LAControlNet Apply -> DiffBIR Sampler."""
    from comfy_host import node_output
    from tiny_models import TINY_CONTROLNETS

    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_SD21_NAME}},
        "2": {"class_type": "DiffBIRLoadModels",
              "inputs": {"stage1_name": "none", "controlnet_name": TINY_CONTROLNETS["v2.1"], "dtype": "auto"}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x8040C0}},
        "p": {"class_type": "DiffBIRPrompt", "inputs": {"clip": ["1", 1], "caption": CAPTION,
                                                        "positive_prompt": V21_POSITIVE,
                                                        "negative_prompt": V21_NEGATIVE}},
        "4": {"class_type": "DiffBIRLAControlNetApply",
              "inputs": {"positive": ["p", 0], "negative": ["p", 1], "control_net": ["2", 1], "image": ["3", 0],
                         "vae": ["1", 2], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0,
                         "model": ["1", 0]}},
        "s": {"class_type": "DiffBIRSampler",
              "inputs": {"model": ["4", 2], "positive": ["4", 0], "negative": ["4", 1], "seed": 1, "steps": 2,
                         "cfg": 4.0, "sampler_name": "spaced", "rescale_cfg": False, "start_point": "noise",
                         "noise_aug": 0, "tile_size": 0, "tile_stride": 16}},
        "o": {"class_type": "PreviewAny", "inputs": {"source": ["p", 3]}},
        "l": {"class_type": "PreviewAny", "inputs": {"source": ["s", 0]}},
    }
    comfy_host.run(graph)
    samples = node_output(comfy_host, "s")["samples"]
    assert samples.shape == (1, 4, 8, 8) and torch.isfinite(samples).all()
    assert node_output(comfy_host, "p", 0)[0][0].shape[1] == 77

