"""Tiny random models of every adapter kind, saved the way each library saves them, so tests
load them through the specs a user types (no download, a few MB in all)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def clip_vocab() -> dict[str, int]:
    """A byte-level CLIP vocabulary without merges: every byte, alone and word-final."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(keep), 0
    for byte in range(256):
        if byte not in keep:
            chars.append(256 + extra)
            extra += 1
    vocab = {chr(c): i for i, c in enumerate(chars)}
    vocab |= {chr(c) + "</w>": len(chars) + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    return vocab


class TinyConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv(x))).flatten(1)


def build(folder: Path) -> dict[str, str]:
    """Save one tiny model of each kind under ``folder``; return the spec of each."""
    import open_clip
    import timm
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPTokenizer,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(timm.create_model("test_vit", pretrained=False).state_dict(),
               folder / "test_vit.pth")
    torch.jit.save(torch.jit.script(TinyConvNet()), folder / "tiny.pt")
    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                             "head_width": 16},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                           "layers": 1}}
    (folder / "TinyCLIP.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / "TinyCLIP.json")
    torch.save(open_clip.create_model("TinyCLIP").state_dict(), folder / "tinyclip.pt")
    vocab = clip_vocab()
    clip = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37,
                         num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=32, bos_token_id=len(vocab) - 2,
                         eos_token_id=len(vocab) - 1, pad_token_id=len(vocab) - 1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                           num_hidden_layers=1, num_attention_heads=2),
        projection_dim=16))
    clip.save_pretrained(folder / "hf-clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
                       ).save_pretrained(folder / "hf-clip")
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(folder / "hf-clip")
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                       num_hidden_layers=1, num_attention_heads=2)
             ).save_pretrained(folder / "hf-vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder / "hf-vit")
    return {"timm": f"timm:test_vit:weights={folder / 'test_vit.pth'}",
            "hf_vit": f"hf:{folder / 'hf-vit'}",
            "hf_clip": f"hf:{folder / 'hf-clip'}",
            "hf_clip_fused": f"hf:{folder / 'hf-clip'}:mode=fused",
            "open_clip": f"open_clip:{folder / 'TinyCLIP.json'}:{folder / 'tinyclip.pt'}",
            "torchscript": f"torchscript:{folder / 'tiny.pt'}"}
