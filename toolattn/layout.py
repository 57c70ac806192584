"""The layout of one decoder call: where its queries sit, which keys each may see.

Every call in this package runs new tokens (queries) after keys/values already in a cache (the
context), with explicit positions and boolean masks, so that padding, packed candidates and
sliding-window layers are handled the same way everywhere. ``Layout`` holds, per batch row:

* ``q_pos [batch, q]`` -- the position of each query (its rotary position, ``position_ids``);
* ``k_pos [batch, keys]``, ``k_valid [batch, keys]`` -- position and validity of each key: the
  context's keys (positions ``0..context-1``) followed by the queries themselves;
* ``q_group``, ``k_group`` (optional) -- packed candidates: a query of group g > 0 sees the shared
  keys (group 0) and its own group only.

Tensors are created on the ``device`` given (the model's), and ``masks(model)`` gives the mask dict
the decoder takes (one boolean ``[batch, 1, q, keys]`` mask per layer type).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Layout:
    q_pos: torch.Tensor
    k_pos: torch.Tensor
    k_valid: torch.Tensor
    q_group: torch.Tensor | None = None
    k_group: torch.Tensor | None = None

    @classmethod
    def after(cls, context: int | torch.Tensor, q_pos: torch.Tensor, q_valid: torch.Tensor | None = None,
              q_group: torch.Tensor | None = None, device=None) -> "Layout":
        """Queries at ``q_pos [batch, q]`` after a context of cached keys at positions ``0..K-1``.

        ``context``: the number of context keys (all valid), or their validity ``[batch, K]`` bool.
        ``q_valid [batch, q]``: which queries are real tokens (None: all); ``q_group``: packed groups.
        """
        device = torch.device(device) if device is not None else q_pos.device
        q_pos = q_pos.to(device)
        B = q_pos.shape[0]
        if isinstance(context, int):
            c_valid = torch.ones(B, context, dtype=torch.bool, device=device)
        else:
            c_valid = context.to(device).expand(B, -1)
        K = c_valid.shape[1]
        q_valid = (torch.ones_like(q_pos, dtype=torch.bool) if q_valid is None else q_valid.to(device))
        k_pos = torch.cat([torch.arange(K, device=device).expand(B, K), q_pos], 1)
        k_valid = torch.cat([c_valid, q_valid], 1)
        k_group = None
        if q_group is not None:
            q_group = q_group.to(device)
            k_group = torch.cat([torch.zeros(B, K, dtype=q_group.dtype, device=device), q_group], 1)
        return cls(q_pos, k_pos, k_valid, q_group, k_group)

    @classmethod
    def span(cls, start: int, valid: torch.Tensor | None = None, length: int | None = None, device=None) -> "Layout":
        """``length`` consecutive tokens at positions ``start..`` after ``start`` context keys (every row
        the same positions, right padding marked by ``valid [batch, q]``; None: one row, all valid)."""
        device = torch.device(device) if device is not None else (valid.device if valid is not None else None)
        if valid is None:
            valid = torch.ones(1, length, dtype=torch.bool, device=device)
        B, S = valid.shape
        q_pos = (start + torch.arange(S, device=device)).expand(B, S)
        return cls.after(start, q_pos, valid, device=device)

    def extend(self, pos: torch.Tensor) -> "Layout":
        """The next decoding step: one new query per row at ``pos [batch, 1]``, after every key so far."""
        pos = pos.to(self.k_pos.device)
        return Layout(pos, torch.cat([self.k_pos, pos], 1),
                      torch.cat([self.k_valid, torch.ones_like(pos, dtype=torch.bool)], 1))

    @property
    def device(self) -> torch.device:
        return self.k_pos.device

    def masks(self, model) -> dict:
        """Boolean attention masks ``[batch, 1, q, keys]`` per layer type of ``model``.

        A query may see a key that is valid, not in its future, inside the sliding window for
        sliding layers, and in the shared context (group 0) or its own group (packed candidates).
        """
        cfg = getattr(model.config, "text_config", model.config)
        q, k = self.q_pos[:, :, None], self.k_pos[:, None, :]
        allowed = self.k_valid[:, None, :] & (k <= q)
        if self.q_group is not None:
            allowed &= (self.k_group[:, None, :] == 0) | (self.k_group[:, None, :] == self.q_group[:, :, None])
        types = getattr(cfg, "layer_types", None) or ["full_attention"]
        masks = {}
        for kind in set(types):
            m = allowed
            if kind == "sliding_attention":
                m = m & ((q - k) < cfg.sliding_window)
            masks[kind] = m[:, None]
        return masks


__all__ = ["Layout"]
