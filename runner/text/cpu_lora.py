"""A vLLM plugin: LoRA on the CPU applied once per run of tokens that share an adapter.

vLLM's CPU LoRA ops (vllm/lora/ops/torch_ops) copy the whole adapter matrix out for every token
of the batch (`weights[indices]`, then an einsum over the copies): 16 chats decoding on one
adapter copy 16 rank x hidden matrices per projection per layer, several times the bytes of the
model itself, and decoded at a quarter of the base model's tokens/s (bench P6). vLLM already
groups the batch's tokens into runs of one adapter (its "prefill metadata", used on every step
of its V1 engine); these ops multiply each run by its adapter's matrix once, as the GPU kernels
do. The arithmetic is vLLM's own (the same dtypes, scale and slices), so a reply is the adapter's
reply: tests/test_finetune_e2e.py compares greedy replies with peft's.

Loaded in every vLLM process through the `vllm.general_plugins` entry point (pyproject.toml); it
changes nothing where vLLM does not use its CPU ops (a GPU build), or when HELIX_CPU_LORA_RUNS=0.
"""
from __future__ import annotations

import os

import torch


def _runs(starts: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor):
    """(rows, adapter slot) of each run of tokens; slot -1 is the base model's."""
    for start, length, slot in zip(starts.tolist(), lengths.tolist(), slots.tolist()):
        yield slice(start, start + length), slot


def _matrices(weights: torch.Tensor) -> torch.Tensor:
    """(adapters, out, in): vLLM stacks them with a layer axis of 1 in some layers."""
    return weights.squeeze(1) if weights.dim() == 4 else weights


def sgmv_shrink(inputs, lora_a_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                batches, max_seq_length, token_nums, scaling):
    """output[run] = scaling * inputs[run] @ A[slot].T, in the output's dtype (vLLM's float32 buffer)."""
    matrices = _matrices(lora_a_weights)
    rank = matrices.shape[1]
    for rows, slot in _runs(b_seq_start_loc, seq_len_tensor, lora_indices_tensor):
        if slot < 0:
            output_tensor[rows, :rank] = 0
            continue
        a = matrices[slot].to(output_tensor.dtype)
        output_tensor[rows, :rank] = scaling * (inputs[rows].to(output_tensor.dtype) @ a.t())


def _expand_into(inputs, lora_b_weights, output_tensor, starts, lengths, slots, columns: slice, add_inputs: bool):
    matrices = _matrices(lora_b_weights)
    for rows, slot in _runs(starts, lengths, slots):
        if slot < 0:
            continue
        b = matrices[slot].to(output_tensor.dtype)
        product = inputs[rows].to(output_tensor.dtype) @ b.t()
        width = min(product.shape[1], (columns.stop or output_tensor.shape[1]) - columns.start)
        target = output_tensor[rows, columns.start:columns.start + width]
        if add_inputs:
            target += product[:, :width]
        else:
            target.copy_(product[:, :width])


def sgmv_expand(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                batches, max_seq_length, token_nums, add_inputs=False):
    """output[run, :out] (+)= inputs[run] @ B[slot].T (the adapter and the model may pad differently)."""
    _expand_into(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                 slice(0, None), add_inputs)


def sgmv_expand_slice(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                      batches, max_seq_length, token_nums, slice_offset, slice_size, add_inputs=False):
    """output[run, offset:offset + size] (+)= inputs[run] @ B[slot].T: one slice of a fused projection."""
    _expand_into(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                 slice(slice_offset, slice_offset + slice_size), add_inputs)


def register() -> None:
    """The entry point: vLLM's CPU punica wrapper calls these ops instead of its own."""
    if os.environ.get("HELIX_CPU_LORA_RUNS", "1") == "0":
        return
    try:
        from vllm.lora.punica_wrapper import punica_cpu
    except ImportError:
        return
    punica_cpu.sgmv_shrink = sgmv_shrink
    punica_cpu.sgmv_expand = sgmv_expand
    punica_cpu.sgmv_expand_slice = sgmv_expand_slice
