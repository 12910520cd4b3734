"""KV caches written in place: decoding without copying the whole cache at every step.

Hugging Face's ``DynamicCache`` grows by concatenation: every decoding step copies every layer's keys
and values (reads and writes the whole cache) before attention reads them once more. On a CPU that
copy costs as much memory traffic as the attention itself. :class:`BufferLayer` keeps a layer's keys
and values in one preallocated buffer; ``update`` writes the new columns in place and returns a view
of the filled part. Rows leaving a batch (a prefix stays) and leading columns dropped are views too.

Buffers are laid out ``[rows, columns, heads, dim]`` (a column of a row is contiguous, so a batch can be
gathered from a store of many rows with one ``index_select``); attention sees the usual
``[rows, heads, columns, dim]`` as a transposed view.

Every model that reaches its cache through ``Cache.update(keys, values, layer_idx)`` works with it
(GPT-2, GPT-Neo, GPT-NeoX, Llama and their relatives in transformers 5).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class BufferLayer(CacheLayerMixin):
    """One layer's keys and values: columns ``start:filled`` of the first ``rows`` rows of a buffer
    ``[rows, width, heads, dim]`` (allocated at the first update when not given)."""

    is_compileable = False
    is_sliding = False
    is_croppable = False

    def __init__(self, keys: torch.Tensor | None = None, values: torch.Tensor | None = None, filled: int = 0,
                 width: int | None = None):
        self.buf_k, self.buf_v = keys, values
        self.width = keys.shape[1] if keys is not None else width
        self.rows = keys.shape[0] if keys is not None else None
        self.start, self.filled = 0, filled
        self.is_initialized = keys is not None
        self.device = keys.device if keys is not None else None
        self.keys = self.values = None
        if keys is not None:
            self._view()

    def _view(self) -> None:
        self.keys = self.buf_k[: self.rows, self.start:self.filled].transpose(1, 2)
        self.values = self.buf_v[: self.rows, self.start:self.filled].transpose(1, 2)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        self.buf_k = key_states.new_zeros((b, self.width, h, d))
        self.buf_v = value_states.new_zeros((b, self.width, value_states.shape[1], value_states.shape[-1]))
        self.rows, self.device, self.is_initialized = b, key_states.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        m = key_states.shape[-2]
        if self.filled + m > self.buf_k.shape[1]:
            raise RuntimeError(f"KV buffer of {self.buf_k.shape[1]} columns is full ({self.filled} + {m})")
        self.buf_k[: self.rows, self.filled:self.filled + m] = key_states.transpose(1, 2)
        self.buf_v[: self.rows, self.filled:self.filled + m] = value_states.transpose(1, 2)
        self.filled += m
        self._view()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.filled - self.start

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def keep_rows(self, rows: int) -> None:
        """Keep the first ``rows`` rows (a view: nothing is copied)."""
        self.rows = rows
        self._view()

    def drop_front(self, columns: int) -> None:
        """Forget the first ``columns`` filled columns (a view)."""
        self.start += columns
        self._view()


def buffer_cache(layers: list[tuple[torch.Tensor, torch.Tensor]], filled: int) -> Cache:
    """A cache over ``(keys, values)`` buffers ``[rows, width, heads, dim]``, one pair per layer, the first
    ``filled`` columns valid."""
    return Cache(layers=[BufferLayer(k, v, filled) for k, v in layers])


def lazy_cache(layers: int, width: int) -> Cache:
    """An empty cache of ``layers`` buffers ``width`` columns wide, allocated by the first pass."""
    return Cache(layers=[BufferLayer(width=width) for _ in range(layers)])


def empty_buffers(like: list[tuple[torch.Tensor, torch.Tensor]], rows: int, width: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Zeroed buffers ``[rows, width, heads, dim]`` for layers whose keys/values look like ``like``
    (``[batch, heads, columns, dim]``). Zeros, not ``empty``: masked columns still enter attention as
    0 × value, and uninitialised memory can hold NaN."""
    return [(k.new_zeros((rows, width, k.shape[1], k.shape[-1])), v.new_zeros((rows, width, v.shape[1], v.shape[-1])))
            for k, v in like]


def keep_rows(cache: Cache, rows: int) -> None:
    for layer in cache.layers:
        layer.keep_rows(rows)


def drop_front(cache: Cache, columns: int) -> None:
    for layer in cache.layers:
        layer.drop_front(columns)


def compact(cache: Cache, index: torch.Tensor) -> None:
    """Keep the rows ``index`` (in that order) of every layer's buffer: one copy, for rows that are done."""
    for layer in cache.layers:
        layer.buf_k = layer.buf_k.index_select(0, index.to(layer.buf_k.device))
        layer.buf_v = layer.buf_v.index_select(0, index.to(layer.buf_v.device))
        layer.rows = len(index)
        layer._view()


def grow(cache: Cache, width: int) -> None:
    """Widen every layer's buffer to ``width`` columns (the filled ones copied)."""
    for layer in cache.layers:
        if layer.buf_k is None or layer.buf_k.shape[1] >= width:
            layer.width = max(layer.width or 0, width)
            continue
        for name in ("buf_k", "buf_v"):
            old = getattr(layer, name)
            new = old.new_zeros((old.shape[0], width, *old.shape[2:]))
            new[:, : layer.filled] = old[:, : layer.filled]
            setattr(layer, name, new)
        layer.width = width
        layer._view()


def width(cache: Cache) -> int:
    layer = cache.layers[0]
    return layer.buf_k.shape[1] if layer.buf_k is not None else layer.width
