"""Ways to apply a mixing matrix W to stacked parameters (leading worker axis).

Every path equals dense ``W @ X`` (tested against numpy): :func:`dense_mix`, :func:`sparse_mix` (neighbour slots),
:func:`shift_mix` (circulant graphs), :func:`mean_mix` (exact average); :func:`neighbor_difference` gives
``(W − I) X`` from neighbour differences. :func:`make_mixer` picks one per topology;
on a split topology (several trees, ``Topology.is_split``) it mixes coordinate k over tree ``k mod T``
(:func:`split_map`).
"""

from simdl.mixing.dense import dense_mix, mean_mix
from simdl.mixing.difference import neighbor_difference, slot_difference
from simdl.mixing.mixer import (
    METHODS,
    Mixer,
    choose_method,
    make_mixer,
    split_gossip_bytes,
    split_map,
    split_offsets,
    split_sizes,
)
from simdl.mixing.relay import relay_plan, relay_step
from simdl.mixing.shift import shift_mix
from simdl.mixing.sparse import sparse_mix

__all__ = ["METHODS", "Mixer", "choose_method", "dense_mix", "make_mixer", "mean_mix", "neighbor_difference",
           "relay_plan", "relay_step", "shift_mix", "slot_difference", "sparse_mix", "split_gossip_bytes", "split_map",
           "split_offsets", "split_sizes"]
