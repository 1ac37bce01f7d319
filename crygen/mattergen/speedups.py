"""Faster replacements for MatterGen functions that sampling calls every step.

The radius graph gives the original's output bit for bit, the bilinear layer the same to
float32 rounding. Declared in :mod:`crygen.patches` (``sampling.*``) and applied by
``crygen.generation.generate`` for the duration of its sampling (:data:`SAMPLING`); each is
tested against MatterGen's original on real sampler states in tests/test_mattergen_compat.py.
"""

from __future__ import annotations

from typing import Any

from crygen import patches

# The patches generate applies while it samples (a test narrows them to compare with MatterGen's own).
SAMPLING = ("sampling.radius_graph", "sampling.bilinear")

# slack on the periodic images a pair needs, so float rounding can never hide a neighbour
_IMAGE_SLACK = 1e-3
# bound on the (pair, image) candidates held at once: (Q, 3) float32 arrays of 24 MB
_CANDIDATES_PER_CHUNK = 1 << 21


def radius_graph_pbc_ocp_per_pair_images(pos, pbc, natoms, cell, radius, max_num_neighbors_threshold,
                                         max_cell_images_per_dim=None):
    """MatterGen's (OCP's) ``radius_graph_pbc`` with the same output, bit for bit, in less time.

    The original measures the distance from every atom pair to every periodic image in a grid
    of cells sized for the batch's most demanding structure (up to 11^3 = 1331 images), so one
    small or skewed cell makes every structure in the batch pay for it, and the cost per
    structure grows with the batch size. An image n of atom j lies within ``radius`` of atom
    i only if, along each lattice direction k, ``|f_j - f_i + n_k| <= radius / d_k``
    (f: fractional coordinates, d_k: spacing of the lattice planes), so here each pair gets
    only the few images in that box (with a little slack, and never beyond the original's
    grid): about a tenth of what even a per-structure grid needs. The candidates' distances
    are computed with the original's own arithmetic and offsets, in the original's order
    (pairs by rank, images in grid order), and finished by the original's own neighbour
    cap. Images outside the box can hold no neighbour, so the edges, their order and their
    distances are the original's."""
    import torch

    if max_cell_images_per_dim is None:
        import sys

        max_cell_images_per_dim = sys.maxsize
    if pbc is None or not bool(torch.all(torch.as_tensor(pbc))):
        return patches.original("sampling.radius_graph")(pos, pbc, natoms, cell, radius, max_num_neighbors_threshold,
                                                         max_cell_images_per_dim)
    inv_min_dist, max_rep = _images_per_direction(cell, radius, max_cell_images_per_dim)
    grid, offset_rows = _image_grid(pos, natoms, cell, max_rep)
    pairs = _pairs_and_their_boxes(pos, natoms, cell, radius, inv_min_dist, max_rep)
    index1, index2, cell_rank, atom_distance_squared = _candidates_in_chunks(pos, pairs, max_rep, len(grid),
                                                                            offset_rows, radius)
    cell_offsets = torch.index_select(grid, 0, cell_rank)
    return _original_neighbour_cap(natoms, cell, index1, index2, cell_offsets, atom_distance_squared,
                                   max_num_neighbors_threshold)


def _images_per_direction(cell, radius, max_cell_images_per_dim):
    """Required images per direction, as the original computes them: the inverse plane
    spacings (B, 3) and the grid's half-width per direction."""
    import torch

    cross_a2a3 = torch.cross(cell[:, 1], cell[:, 2], dim=-1)
    cell_vol = torch.sum(cell[:, 0] * cross_a2a3, dim=-1, keepdim=True)
    cross_a3a1 = torch.cross(cell[:, 2], cell[:, 0], dim=-1)
    cross_a1a2 = torch.cross(cell[:, 0], cell[:, 1], dim=-1)
    inv_min_dist = torch.stack([torch.norm(c / cell_vol, p=2, dim=-1) for c in (cross_a2a3, cross_a3a1, cross_a1a2)],
                               dim=1)  # (B, 3)
    rep = torch.ceil(radius * inv_min_dist)
    max_rep = [min(int(rep[:, k].max()), max_cell_images_per_dim) for k in range(3)]
    return inv_min_dist, max_rep


def _image_grid(pos, natoms, cell, max_rep):
    """The original's grid of cells and its offsets for every structure (same call, same values)."""
    import torch

    cells_per_dim = [torch.arange(-r, r + 1, device=pos.device, dtype=torch.float) for r in max_rep]
    grid = torch.cartesian_prod(*cells_per_dim)  # (C, 3), lexicographic
    num_cells = len(grid)
    data_cell = torch.transpose(cell, 1, 2)
    pbc_offsets = torch.bmm(data_cell, grid.t().view(1, 3, num_cells).expand(len(natoms), -1, -1))  # (B, 3, C)
    offset_rows = pbc_offsets.transpose(1, 2).reshape(-1, 3)  # row b * C + cell rank
    return grid, offset_rows


def _pairs_and_their_boxes(pos, natoms, cell, radius, inv_min_dist, max_rep) -> dict[str, Any]:
    """Every atom pair in the original's order, and the box of images it can need."""
    import torch

    device = pos.device
    batch_size = len(natoms)
    natoms_squared = (natoms**2).long()
    index_offset = torch.cumsum(natoms, dim=0) - natoms
    n_pairs = int(natoms_squared.sum())
    struct_of_pair = torch.repeat_interleave(torch.arange(batch_size, device=device), natoms_squared)
    local = torch.arange(n_pairs, device=device) - torch.repeat_interleave(
        torch.cumsum(natoms_squared, 0) - natoms_squared, natoms_squared)
    n_expand = natoms[struct_of_pair]
    first_atom = index_offset[struct_of_pair]
    index1 = torch.div(local, n_expand, rounding_mode="floor") + first_atom
    index2 = (local % n_expand) + first_atom
    with torch.no_grad():
        batch_of_atom = torch.repeat_interleave(torch.arange(batch_size, device=device), natoms)
        frac = torch.linalg.solve(cell.double().transpose(1, 2)[batch_of_atom], pos.double().unsqueeze(-1))[..., 0]
        reach = (radius * inv_min_dist.double() * (1 + _IMAGE_SLACK) + _IMAGE_SLACK)[struct_of_pair]
        shift = frac[index2] - frac[index1]
        caps = torch.tensor(max_rep, dtype=torch.double, device=device)
        # a non-finite cell or position (a diverging sample) gets the original's whole grid
        low = torch.nan_to_num(torch.ceil(-reach - shift), nan=-torch.inf)
        high = torch.nan_to_num(torch.floor(reach - shift), nan=torch.inf)
        low = torch.maximum(low, -caps).long()
        high = torch.minimum(high, caps).long()
        width = (high - low + 1).clamp(min=0)  # (P, 3)
        images_of_pair = width.prod(dim=1)
    return {"n_pairs": n_pairs, "struct_of_pair": struct_of_pair, "index1": index1, "index2": index2,
            "low": low, "width": width, "images_of_pair": images_of_pair}


def _candidates_in_chunks(pos, pairs: dict[str, Any], max_rep, num_cells, offset_rows, radius):
    """Every pair's candidate images within ``radius``, the pairs taken in chunks so the
    (candidates, 3) arrays stay bounded on big batches: index1, index2, grid rank, squared distance."""
    import torch

    low, width, images_of_pair = pairs["low"], pairs["width"], pairs["images_of_pair"]
    # per pair, what each of its candidates needs (one gather per candidate, not one per field):
    # the box's strides, the grid rank of its first image, both atoms and the structure's rows
    sides = [2 * r + 1 for r in max_rep]
    first_rank = ((low[:, 0] + max_rep[0]) * sides[1] + low[:, 1] + max_rep[1]) * sides[2] + low[:, 2] + max_rep[2]
    per_pair = torch.stack((width[:, 2], width[:, 1] * width[:, 2], first_rank, pairs["index1"], pairs["index2"],
                            pairs["struct_of_pair"] * num_cells), dim=1)
    chunk_end = torch.cumsum(images_of_pair, 0)
    parts, first = [], 0
    while first < pairs["n_pairs"]:
        limit = (chunk_end[first - 1] if first else 0) + _CANDIDATES_PER_CHUNK
        last = max(first + 1, int(torch.searchsorted(chunk_end, limit, right=True)))
        parts.append(_pair_image_candidates(pos, per_pair[first:last], images_of_pair[first:last], sides,
                                            offset_rows, radius))
        first = last
    return tuple(torch.cat(x) for x in zip(*parts))


def _original_neighbour_cap(natoms, cell, index1, index2, cell_offsets, atom_distance_squared,
                            max_num_neighbors_threshold):
    """From here on, the original's own code: the neighbour cap and the outputs."""
    import torch
    from mattergen.common.utils import ocp_graph_utils as ocp

    mask_num_neighbors, num_neighbors_image = ocp.get_max_neighbors_mask(
        natoms=natoms, index=index1, atom_distance_squared=atom_distance_squared,
        max_num_neighbors_threshold=max_num_neighbors_threshold,
    )
    if not torch.all(mask_num_neighbors):
        index1 = torch.masked_select(index1, mask_num_neighbors)
        index2 = torch.masked_select(index2, mask_num_neighbors)
        atom_distance_squared = torch.masked_select(atom_distance_squared, mask_num_neighbors)
        cell_offsets = torch.masked_select(cell_offsets.view(-1, 3), mask_num_neighbors.view(-1, 1).expand(-1, 3))
        cell_offsets = cell_offsets.view(-1, 3)
    edge_index = torch.stack((index2, index1))
    cell_repeated = torch.repeat_interleave(cell, num_neighbors_image, dim=0)
    offsets = -cell_offsets.float().view(-1, 1, 3).bmm(cell_repeated.float()).view(-1, 3)
    return edge_index, cell_offsets, num_neighbors_image, offsets, torch.sqrt(atom_distance_squared)


def _pair_image_candidates(pos, per_pair, images_of_pair, sides, offset_rows, radius):
    """Each pair with every image in its box, lexicographically (the original's grid order),
    and those within ``radius``: index1, index2, the image's grid rank, squared distance.
    (index_select throughout: CPU advanced indexing is several times slower.)"""
    import torch

    device = pos.device
    pair = torch.repeat_interleave(torch.arange(len(per_pair), device=device), images_of_pair)
    rank = torch.arange(len(pair), device=device) - torch.index_select(
        torch.cumsum(images_of_pair, 0) - images_of_pair, 0, pair)
    stride2, stride1, first_rank, index1, index2, rows = torch.index_select(per_pair, 0, pair).unbind(1)
    n0 = torch.div(rank, stride1, rounding_mode="floor")
    rest = rank - n0 * stride1
    n1 = torch.div(rest, stride2, rounding_mode="floor")
    n2 = rest - n1 * stride2
    cell_rank = first_rank + n0 * (sides[1] * sides[2]) + n1 * sides[2] + n2
    pos1 = torch.index_select(pos, 0, index1)
    pos2 = torch.index_select(pos, 0, index2) + torch.index_select(offset_rows, 0, rows + cell_rank)
    d2 = torch.sum((pos1 - pos2) ** 2, dim=1)
    keep = torch.nonzero(torch.logical_and(torch.le(d2, radius * radius), torch.gt(d2, 0.0001))).view(-1)
    return (torch.index_select(index1, 0, keep), torch.index_select(index2, 0, keep),
            torch.index_select(cell_rank, 0, keep), torch.index_select(d2, 0, keep))


def efficient_bilinear_in_one_product(self, basis, m, id_reduce, id_ragged_idx):
    """MatterGen's ``EfficientInteractionBilinear.forward`` with its last step, the bilinear form
    over (emb_size_interm, emb_size), done as one (nEdges, interm * emb) x (interm * emb, out)
    product instead of emb_size batched products over a permuted copy followed by a sum; a
    quarter of the sampler's time at batch 64 on CPU went there. The same function, summed in
    another order, so not bit for bit: on real sampler states it is within a few float32
    ulps of the exact (float64) result, as the original is (7e-7 against 2.6e-7 of the
    largest output), and the denoiser's scores move by 1e-5 of their magnitude."""
    import torch

    rbf_w1, sph = basis  # (nEdges, emb_size_interm, num_spherical), (nEdges, num_spherical, Kmax)
    n_edges = rbf_w1.shape[0]
    if n_edges == 0:
        return patches.original("sampling.bilinear")(self, basis, m, id_reduce, id_ragged_idx)
    k_max = int(id_ragged_idx.max()) + 1 if len(id_ragged_idx) else 0
    m2 = m.new_zeros(n_edges, k_max, self.emb_size)  # zero-padded neighbours, as the original
    m2[id_reduce, id_ragged_idx] = m
    sum_k = torch.matmul(sph, m2)  # (nEdges, num_spherical, emb_size)
    rbf_w1_sum_k = torch.matmul(rbf_w1, sum_k)  # (nEdges, emb_size_interm, emb_size)
    weight = self.weight.permute(1, 0, 2).reshape(-1, self.units_out)  # (interm * emb, out)
    return rbf_w1_sum_k.reshape(n_edges, -1) @ weight
