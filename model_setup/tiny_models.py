"""Build tiny random-weight models locally, for tests and for machines without a model hub.

    python -m model_setup.tiny_models --out DIR

writes ``DIR/tiny-chat`` (a Llama causal LM that transformers loads and ``vllm serve`` serves)
and ``DIR/tiny-sd`` (a Stable Diffusion pipeline that diffusers loads). Nothing is downloaded:
the tokenizers are trained here on the short text below and the weights are random. Seeds are
fixed, so two builds give the same files. A model directory counts as built only once its
marker file exists; the marker is written last, so a half-built directory is rebuilt.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

MARKER = ".tiny-model-complete"
# Written into the marker: a model built by an older recipe is rebuilt.
RECIPE_VERSION = "3"
SEED = 0

# Small English text to train the tokenizers on. The models' weights are random, so the text only
# has to give the BPE trainer enough words to learn a vocabulary of realistic shape.
CORPUS = """\
The quick brown fox jumps over the lazy dog. A small model can still answer a question, even if
the answer makes no sense, because its weights were never trained on anything at all.

Hello! How are you today? I am fine, thank you. What would you like to talk about? We could talk
about the weather, about books, about music, or about the history of the city by the river.

Once upon a time there was a little robot who lived in a house at the edge of a forest. Every
morning the robot opened the window, looked at the trees and the mountains, and wrote a short
poem about the colours of the sky. Some days the sky was blue, some days it was grey, and on the
best days it was red and gold when the sun went down behind the hills.

Please summarise the following document in three sentences. The report describes the results of
an experiment in which a team of engineers measured the speed, the memory and the cost of a
service that answers questions about documents. They found that the service was fast, that it
used less memory than expected, and that the cost depended mostly on the size of the model.

A photograph of a cat sitting on a red chair in a sunny garden, with flowers, green grass and a
blue sky. A painting of a mountain lake at sunrise, in the style of an old master, highly
detailed, soft light. An astronaut riding a horse on the moon, digital art, sharp focus.

Numbers and symbols also appear in text: 1, 2, 3, 10, 42, 100, 2024; email@example.com;
https://example.org/path?query=value; (brackets), [lists], {objects}, "quotes", 'apostrophes',
don't, can't, it's, we're, they've, I'm, you'll, she'd. Assistant, user, system, message, reply.

In the kitchen, my grandmother baked bread every Sunday. She mixed flour, water, salt and yeast,
kneaded the dough for ten minutes, and left it to rise beside the warm oven. While we waited she
told stories about her childhood on a farm: the cows, the chickens, the harvest in autumn, the
snow in winter, and the long walk to school across the frozen fields.

Scientists study the universe with telescopes, satellites and careful mathematics. Stars are born
in clouds of gas and dust; planets form from the leftover material; galaxies collide slowly over
billions of years. Chemistry explains why iron rusts, why leaves change colour, and why water
boils at a lower temperature high in the mountains.

To install the software, download the package, open a terminal, and run the setup command. If an
error appears, check the logs, restart the server, and try again. Developers write functions,
classes, tests and documentation; they review changes, fix bugs, and deploy new versions to
production when the continuous integration pipeline is green.

Travellers crossed the desert on camels, following ancient routes between busy markets where
merchants sold spices, silk, copper, glass, pottery, jewellery and perfume. Sailors navigated by
the stars, and explorers drew maps of coastlines, islands, rivers, valleys and volcanoes.

Football, tennis, swimming, cycling and running are popular sports. Athletes train hard, eat
healthy food, sleep well and practise every day; coaches plan exercises, measure progress and
encourage their teams before important matches, tournaments and championships.
"""

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def build_chat_tokenizer():
    """Train a SentencePiece-style BPE over whole characters (Metaspace, as Llama's tokenizer)
    and wrap it as a PreTrainedTokenizerFast with Llama-style special tokens and a chat template.

    Not byte-level: every token decodes to whole printable characters, so a stream of random
    tokens is readable text, never control characters or half a UTF-8 sequence (which vLLM's
    detokenizer holds back, stalling streamed replies). Characters outside the corpus map to <unk>.
    """
    import string

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=special,
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation + "\n"),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def build_tiny_chat(path: Path) -> None:
    """A 2-layer Llama: head_dim 32 because vLLM's CPU attention needs >= 32, and 4096 positions
    because a request past a short context crashed the vLLM engine."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_chat_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def learn_word_merges(words: Counter[str], num_merges: int) -> list[tuple[str, str]]:
    """Plain BPE over whole words, each ending in a `</w>` symbol. Written out here because the
    `tokenizers` trainer numbers `</w>` symbols in hash order, so its merges change between runs;
    this loop breaks ties by the pair itself and always gives the same merges."""
    splits = {w: [*w[:-1], w[-1] + "</w>"] for w in words}
    merges = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for w, symbols in splits.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += words[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for symbols in splits.values():
            i = 0
            while i < len(symbols) - 1:
                if (symbols[i], symbols[i + 1]) == best:
                    symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
                i += 1
    return merges


def build_clip_tokenizer(path: Path):
    """CLIPTokenizer reads vocab.json + merges.txt. Split the corpus into words with the same
    normaliser and pre-tokeniser CLIPTokenizer uses, learn merges, and lay the vocabulary out like
    CLIP's: every byte alone and with `</w>`, then the merges, then the two special tokens."""
    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers import CLIPTokenizer

    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    words = Counter(
        word
        for line in CORPUS.splitlines()
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line))
    )
    merges = learn_word_merges(words, num_merges=500)

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))

    path.mkdir(parents=True)
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (path / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    return CLIPTokenizer(
        vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"), model_max_length=77
    )


def build_tiny_sd(path: Path) -> None:
    """A Stable Diffusion 1.x-shaped pipeline small enough to denoise a 64x64 image in a few
    steps in well under a second on a CPU. The VAE has four blocks so its scale factor is 8, as
    in the real models: UNet sample_size 8 means a default size of 64 pixels."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    # The tokenizer's vocab.json and merges.txt go where save_pretrained puts its tokenizer.json.
    tokenizer = build_clip_tokenizer(path / "tokenizer")

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    torch.manual_seed(SEED)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        timestep_spacing="trailing", steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)


BUILDERS = {"tiny-chat": build_tiny_chat, "tiny-sd": build_tiny_sd}


def build_tiny_sdxl(models: Path, out: Path) -> Path:
    """An SDXL-shaped pipeline (two text encoders, pooled text and size conditioning) from the tiny
    model's tokenizer, VAE and scheduler (`models`/tiny-sd), saved to `out`: the SDXL code path,
    run on a CPU in seconds (tests) or on a GPU along SDXL's float16 path (bench)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    sd = models / "tiny-sd"
    tokenizer = CLIPTokenizer.from_pretrained(sd / "tokenizer")
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=(2, 4),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64)
    StableDiffusionXLPipeline(
        vae=AutoencoderKL.from_pretrained(sd / "vae"), text_encoder=CLIPTextModel(config),
        text_encoder_2=CLIPTextModelWithProjection(config), tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
        scheduler=EulerDiscreteScheduler.from_pretrained(sd / "scheduler")).save_pretrained(out)
    return out


def build(out: str | Path, names: list[str] | None = None) -> dict[str, Path]:
    """Build each named model under ``out`` unless its marker says it is already there.
    A model is built in a temporary sibling directory and renamed into place, then marked."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names or list(BUILDERS):
        path = out / name
        paths[name] = path
        marker = path / MARKER
        if marker.exists() and marker.read_text().strip() == RECIPE_VERSION:
            print(f"{name}: already built at {path}, skipped", flush=True)
            continue
        started = time.monotonic()
        if path.exists():
            shutil.rmtree(path)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out))
        try:
            BUILDERS[name](staging / "model")
            # safetensors writes its files owner-only; a server run as another user must read them.
            for f in (staging / "model").rglob("*"):
                f.chmod(0o755 if f.is_dir() else 0o644)
            (staging / "model").rename(path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        (path / MARKER).write_text(RECIPE_VERSION + "\n")
        print(f"{name}: built at {path} in {time.monotonic() - started:.1f}s", flush=True)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory to put the model directories in")
    parser.add_argument("--only", choices=sorted(BUILDERS), action="append",
                        help="build only this model (repeatable)")
    args = parser.parse_args(argv)
    build(args.out, args.only)


if __name__ == "__main__":
    main()
