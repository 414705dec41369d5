"""A faithful PyTorch re-implementation of the original pipeline's KD step and mini-KD loop, as the baseline.

What the original pipeline does, and so what this does on purpose:
- teacher and student are both `AutoModelForMaskedLM`; the teacher runs in eval mode under `no_grad`; the student is
  randomly initialised from the teacher's config with the candidate's sizes;
- every sentence is padded (and truncated) to 128 tokens by the tokenizer, then MLM-masked (15%, BERT 80/10/10) with
  transformers' `DataCollatorForLanguageModeling`, although no MLM loss is used;
- both models compute their 30k-way vocabulary logits (a checkpoint without an MLM head, such as all-MiniLM-L6-v2,
  gets a randomly initialised one, as `from_pretrained` does in the original) and all hidden states;
- one `Linear(Hs, 2*Ht)` projects every student layer onto the concatenation of its two "Uniform+Last" teacher
  layers (student layer i -> teacher layers floor(i*Lt/Ls) and Lt-Ls+i); the loss is the mean over student layers of
  `nn.MSELoss` over all positions (padding included, as the original);
- AdamW, lr 5e-5, on the student and the projection.

Run as a module by `bench/kd_throughput.py` and `bench/search_throughput.py`; torch is the optional `bench` extra.
"""

from __future__ import annotations

import dataclasses
import os
import time

import torch
from torch import nn

MAX_LEN = 128


def uniform_last(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    return [
        (i * teacher_layers // student_layers, max(0, teacher_layers - student_layers + i))
        for i in range(student_layers)
    ]


@dataclasses.dataclass
class StudentDims:
    num_layers: int
    hidden_size: int
    num_heads: int
    ffn_size: int
    activation: str = "gelu"


class TorchKD:
    """Teacher, student, projection and AdamW of one candidate, as the original builds them."""

    def __init__(
        self, teacher_dir: str, dims: StudentDims, seed: int = 0, lr: float = 5e-5, tokenizer=None, teacher=None
    ):
        import transformers
        from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling

        transformers.logging.set_verbosity_error()
        torch.manual_seed(seed)
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(teacher_dir)
        # Teachers saved by Flax only (kdjax's random test teachers) are converted; hub checkpoints load as is.
        from_flax = not any(
            os.path.exists(os.path.join(teacher_dir, f)) for f in ("model.safetensors", "pytorch_model.bin")
        )
        if teacher is not None:  # a search loads the teacher once and reuses it for every candidate
            self.teacher = teacher
        elif from_flax:  # `from_pretrained(from_flax=True)` trips over meta tensors in transformers 4.57
            from transformers.modeling_flax_pytorch_utils import load_flax_checkpoint_in_pytorch_model

            self.teacher = AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(teacher_dir))
            load_flax_checkpoint_in_pytorch_model(self.teacher, os.path.join(teacher_dir, "flax_model.msgpack"))
            self.teacher.eval()
        else:
            self.teacher = AutoModelForMaskedLM.from_pretrained(teacher_dir).eval()
        cfg = AutoConfig.from_pretrained(teacher_dir)
        cfg.num_hidden_layers = dims.num_layers
        cfg.hidden_size = dims.hidden_size
        cfg.num_attention_heads = dims.num_heads
        cfg.intermediate_size = dims.ffn_size
        cfg.hidden_act = dims.activation
        self.student = AutoModelForMaskedLM.from_config(cfg).train()
        t_hidden, t_layers = self.teacher.config.hidden_size, self.teacher.config.num_hidden_layers
        self.projection = nn.Linear(dims.hidden_size, 2 * t_hidden)
        self.mapping = uniform_last(dims.num_layers, t_layers)
        self.optimizer = torch.optim.AdamW(list(self.student.parameters()) + list(self.projection.parameters()), lr=lr)
        self.collator = DataCollatorForLanguageModeling(self.tokenizer, mlm=True, mlm_probability=0.15)
        self.mse = nn.MSELoss()

    def encode(self, sentences: list[str]) -> dict[str, torch.Tensor]:
        """Pad every sentence to 128 tokens, then MLM-mask (the original's input pipeline)."""
        enc = self.tokenizer(sentences, padding="max_length", truncation=True, max_length=MAX_LEN, return_tensors="pt")
        inputs, _labels = self.collator.torch_mask_tokens(enc["input_ids"].clone())
        return {"input_ids": inputs, "attention_mask": enc["attention_mask"]}

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        """One AdamW step of hidden-state KD; returns the loss."""
        with torch.no_grad():
            t_out = self.teacher(**batch, output_hidden_states=True)
        s_out = self.student(**batch, output_hidden_states=True)
        losses = []
        for i, (a, b) in enumerate(self.mapping):
            s = self.projection(s_out.hidden_states[i + 1])
            t = torch.cat([t_out.hidden_states[a + 1], t_out.hidden_states[b + 1]], dim=-1)
            losses.append(self.mse(s, t))
        loss = torch.stack(losses).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def mini_kd(self, sentences: list[str], epochs: int, batch_size: int) -> dict:
        """The original mini-KD: `epochs` passes over the proxy sentences; the last epoch's mean loss is the score."""
        t0 = time.perf_counter()
        epoch_losses = []
        for _ in range(epochs):
            losses = []
            for i in range(0, len(sentences) - batch_size + 1, batch_size):
                losses.append(self.step(self.encode(sentences[i : i + batch_size])))
            epoch_losses.append(sum(losses) / max(1, len(losses)))
        return {"epoch_losses": epoch_losses, "wall_s": time.perf_counter() - t0}


def non_pad_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["attention_mask"].sum())
