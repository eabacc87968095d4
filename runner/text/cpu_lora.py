"""A vLLM plugin: LoRA on the CPU applied once per run of tokens that share an adapter.

vLLM's CPU LoRA ops (vllm/lora/ops/torch_ops) copy the whole adapter matrix out for every token
of the batch (`weights[indices]`, then an einsum over the copies): 16 chats decoding on one
adapter copy 16 rank x hidden matrices per projection per layer, several times the bytes of the
model itself, and decoded at a quarter of the base model's tokens/s (bench P6). vLLM already
groups the batch's tokens into runs of one adapter (its "prefill metadata", used on every step
of its V1 engine); these ops multiply each run by its adapter's matrix once, as the GPU kernels
do. The arithmetic is the adapter's (vLLM's scale and slices, products in float32, the precision
of vLLM's own buffer between the two), so a reply is the adapter's reply:
tests/test_finetune_e2e.py reads the served greedy replies with peft. Bench P6 went from 0.28 to
0.86 of the base model's tokens/s, P5 from 2.2 to 1.3 of its first reply's time.

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


# (id of vLLM's stacked weights, slot) -> (their version, their address, the slot's matrix in float32)
_matrices: dict[tuple[int, int], tuple[int, int, torch.Tensor]] = {}


def _matrix(weights: torch.Tensor, slot: int, rank_axis: int) -> torch.Tensor:
    """The adapter's matrix in a slot, in float32 and without vLLM's zero padding up to its
    `--max-lora-rank` (a rank-16 adapter in rank-64 slots: a quarter of the numbers). On these
    small shapes a float32 product takes a fifth of a bfloat16 one's time (bfloat16's kernels
    cost about 30 µs a call however small the product; decoding one token makes some 400 such
    calls). Kept until vLLM writes any slot of the stack again: it writes in place, which moves
    the tensor's version."""
    key = (id(weights), slot)
    kept = _matrices.get(key)
    if kept and kept[0] == weights._version and kept[1] == weights.data_ptr():
        return kept[2]
    matrix = (weights.squeeze(1) if weights.dim() == 4 else weights)[slot].float()
    used = matrix.abs().sum(dim=1 - rank_axis).nonzero()
    rank = int(used[-1]) + 1 if len(used) else 0
    matrix = (matrix[:rank] if rank_axis == 0 else matrix[:, :rank]).contiguous()
    _matrices[key] = (weights._version, weights.data_ptr(), matrix)
    return matrix


def sgmv_shrink(inputs, lora_a_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                batches, max_seq_length, token_nums, scaling):
    """output[run] = scaling * inputs[run] @ A[slot].T (vLLM's float32 buffer); zero past the rank."""
    for rows, slot in _runs(b_seq_start_loc, seq_len_tensor, lora_indices_tensor):
        if slot < 0:
            output_tensor[rows] = 0
            continue
        a = _matrix(lora_a_weights, slot, rank_axis=0)
        rank = a.shape[0]
        output_tensor[rows, :rank] = scaling * torch.nn.functional.linear(inputs[rows].float(), a)
        output_tensor[rows, rank:] = 0


def _expand_into(inputs, lora_b_weights, output_tensor, starts, lengths, slots, columns: slice, add_inputs: bool):
    for rows, slot in _runs(starts, lengths, slots):
        if slot < 0:
            continue
        b = _matrix(lora_b_weights, slot, rank_axis=1)
        width = min(b.shape[0], (columns.stop or output_tensor.shape[1]) - columns.start)
        target = output_tensor[rows, columns.start:columns.start + width]
        if b.shape[1] == 0:  # an adapter whose B is all zeros (a fresh one) adds nothing
            if not add_inputs:
                target.zero_()
            continue
        product = torch.nn.functional.linear(inputs[rows, :b.shape[1]].float(), b[:width])
        if add_inputs:
            target += product
        else:
            target.copy_(product)


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
