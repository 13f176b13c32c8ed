"""Clients' personalized item rows, stored only for the rows each client touched."""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import Tensor


class PersonalItemRows:
    """A sparse store of per-client item rows: ``(client, item) -> [d]``.

    Entries are kept sorted by the key ``client * num_items + item``, so a lookup is a
    binary search and memory grows with the number of stored rows, never with
    ``clients x items``. A client's view of the item table is its stored rows over a base
    table (see :meth:`view`).
    """

    def __init__(self, num_clients: int, num_items: int, dim: int, device=None,
                 dtype: torch.dtype = None):
        self.num_items = num_items
        self.num_clients = num_clients
        self.keys = torch.empty(0, dtype=torch.long, device=device)
        self.values = torch.empty(0, dim, device=device, dtype=dtype)

    #: Stored rows moved at a time when a replacement merges the kept rows with new ones.
    MERGE_ROWS = 1 << 18

    def __len__(self) -> int:
        return self.keys.numel()

    def replace(self, clients: Tensor, row_client: Tensor, row_item: Tensor,
                values: Tensor) -> None:
        """Drops every row of ``clients`` and stores ``values`` at ``(row_client, row_item)``,
        which must be sorted by client, then item (as a round plan's rows are). The rows
        kept and the new ones are merged in one pass into the new store, without a copy of
        the store on the way (:meth:`_merged`)."""
        self._store(clients, self.keys_of(row_client, row_item), values.detach())

    def keys_of(self, row_client: Tensor, row_item: Tensor) -> Tensor:
        """The store's keys ``client * num_items + item`` of the rows ``(row_client,
        row_item)``."""
        return row_client * self.num_items + row_item

    def replace_blocks(self, clients: Tensor, blocks: List[Tuple[Tensor, Tensor]]) -> None:
        """:meth:`replace` with the new rows in blocks of ascending clients, each block's
        ``(keys, values)`` (:meth:`keys_of`) sorted by key. The list is emptied as its values
        are copied into one new table, each block freed once copied, so the new rows are
        held about once on the way rather than twice (the new table's pages are written
        block by block)."""
        keys = torch.cat([block_keys for block_keys, _ in blocks]) if blocks else self.keys[:0]
        values = (blocks[0][1].new_empty(keys.numel(), blocks[0][1].size(1)) if blocks
                  else self.values[:0])
        start = 0
        while blocks:
            block_values = blocks.pop(0)[1]
            values[start:start + block_values.size(0)] = block_values.detach()
            start += block_values.size(0)
            del block_values
        self._store(clients, keys, values)

    def _store(self, clients: Tensor, new_keys: Tensor, values: Tensor) -> None:
        """Drops every row of ``clients`` and stores ``values`` at the sorted keys
        ``new_keys``."""
        if clients.numel() < self.num_clients and self.keys.numel():  # (all: none is kept)
            replaced = torch.zeros(self.num_clients, dtype=torch.bool, device=clients.device)
            replaced[clients] = True
            kept = torch.nonzero(~replaced[torch.div(self.keys, self.num_items,
                                                     rounding_mode='floor')]).view(-1)
            if kept.numel():
                self.keys, self.values = self._merged(kept, new_keys, values)
                return
        self.keys, self.values = new_keys, values

    def _merged(self, kept: Tensor, new_keys: Tensor, values: Tensor):
        """``(keys, values)``: the stored entries at ``kept`` (indices, ascending) and the new
        ones merged in key order. Keys are unique and the two sets disjoint, so an entry's
        place is its index in its own set plus the number of the other set's smaller keys;
        the kept values are moved :attr:`MERGE_ROWS` rows at a time."""
        old_keys = self.keys[kept]
        old_place = (torch.arange(kept.numel(), device=kept.device)
                     + torch.searchsorted(new_keys, old_keys))
        new_place = (torch.arange(new_keys.numel(), device=kept.device)
                     + torch.searchsorted(old_keys, new_keys))
        total = kept.numel() + new_keys.numel()
        keys = torch.empty(total, dtype=old_keys.dtype, device=old_keys.device)
        keys[old_place] = old_keys
        keys[new_place] = new_keys
        merged = self.values.new_empty(total, self.values.size(1))
        merged[new_place] = values.to(merged.dtype)
        for start in range(0, kept.numel(), self.MERGE_ROWS):
            block = slice(start, start + self.MERGE_ROWS)
            merged[old_place[block]] = self.values[kept[block]]
        return keys, merged

    def clear(self) -> None:
        """Drops every stored row."""
        self.keys, self.values = self.keys[:0].clone(), self.values[:0].clone()

    def lookup(self, client: Tensor, item: Tensor):
        """``(found, index)``: whether ``(client, item)`` is stored, and where."""
        key = client * self.num_items + item
        if self.keys.numel() == 0:
            return torch.zeros_like(key, dtype=torch.bool), torch.zeros_like(key)
        index = torch.searchsorted(self.keys, key).clamp_max(self.keys.numel() - 1)
        return self.keys[index] == key, index

    def view(self, client: Tensor, item: Tensor, base: Tensor) -> Tensor:
        """``[..., d]`` client ``client``'s rows of ``item``: stored rows where present,
        ``base`` rows elsewhere (broadcasting ``client`` against ``item``)."""
        client, item = torch.broadcast_tensors(client, item)
        found, index = self.lookup(client, item)
        return torch.where(found.unsqueeze(-1), self.values[index], base[item])

    def rows_of(self, clients: Tensor):
        """``(position, item, values)`` of the stored rows of ``clients`` (position indexes
        ``clients``). Each client's rows are one contiguous run of the sorted keys."""
        start = torch.searchsorted(self.keys, clients * self.num_items)
        count = torch.searchsorted(self.keys, (clients + 1) * self.num_items) - start
        position = torch.repeat_interleave(torch.arange(clients.numel(), device=clients.device),
                                           count)
        offset = torch.arange(position.numel(), device=clients.device) - (
            torch.cumsum(count, 0) - count)[position]
        index = start[position] + offset
        return position, self.keys[index] % self.num_items, self.values[index]

    def state_dict(self) -> Dict[str, Tensor]:
        return {'keys': self.keys, 'values': self.values}

    def load_state_dict(self, state: Dict[str, Tensor]) -> None:
        self.keys, self.values = state['keys'], state['values']
