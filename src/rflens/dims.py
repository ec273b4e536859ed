"""Which dims of a traced tensor hold which spatial axes, followed through views and permutes.

Each dim of a tensor is a tuple of *atoms* (outermost first) whose sizes multiply to the dim's size:
``("s", axis, size, inner)`` is a factor of spatial axis ``axis`` (``inner`` is its stride in units of that
axis, 1 for the innermost factor; a whole axis is one atom with inner 1) and ``("n", -1, size, 1)`` is
anything else (batch, channels, heads...). ``("x", -1, k, 1)`` leads a dim of ``k + product``
elements: k prefix tokens (a ViT's class and register tokens) in front of flattened patch tokens.
Flattened tokens of a ViT are one dim holding two spatial atoms; Swin's window partition splits an axis
into (windows, within-window) atoms. ``("r", axis, 1, 1)`` marks a size-1 dim left where a whole axis was
reduced with keepdim (a global pooling): growing it back (upsampling, expand) broadcasts along that axis.
Other size-1 non-spatial atoms are dropped. Pure Python: no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Atom = tuple[str, int, int, int]
Dims = tuple[tuple[Atom, ...], ...]


class RegroupError(ValueError):
    """A view mixes spatial atoms in a way that is not a split or merge of whole factors."""


def other(size: int) -> tuple[Atom, ...]:
    """The atoms of a non-spatial dim of this size."""
    return (("n", -1, size, 1),) if size != 1 else ()


def size_of(atoms: Sequence[Atom]) -> int:
    """Number of elements of a dim with these atoms."""
    prod = 1
    for a in atoms:
        if a[0] != "x":
            prod *= a[2]
    return prod + atoms[0][2] if atoms and atoms[0][0] == "x" else prod


def axis_size(dims: Dims, axis: int) -> int:
    """Units along ``axis`` held by these dims: the product of its factors (1 where none is left)."""
    return math.prod(a[2] for d in dims for a in d if a[0] == "s" and a[1] == axis)


def prefix(atoms: Sequence[Atom]) -> int:
    """Number of prefix tokens in front of the dim's other elements."""
    return atoms[0][2] if atoms and atoms[0][0] == "x" else 0


def reduced(atoms: Sequence[Atom], axis_sizes: Sequence[int]) -> tuple[Atom, ...]:
    """What stays of a dim reduced with keepdim: the marker of its axis if it held one whole axis."""
    axis = whole_axis(atoms, axis_sizes)
    return (("r", axis, 1, 1),) if axis is not None else ()


def reduced_axis(atoms: Sequence[Atom]) -> int | None:
    return atoms[0][1] if len(atoms) == 1 and atoms[0][0] == "r" else None


def spatial(axis: int, size: int) -> tuple[Atom, ...]:
    return (("s", axis, size, 1),)


def spatial_atoms(atoms: Sequence[Atom]) -> list[Atom]:
    return [a for a in atoms if a[0] == "s"]


def axes_of(atoms: Sequence[Atom]) -> set[int]:
    return {a[1] for a in atoms if a[0] == "s"}


def whole_axis(atoms: Sequence[Atom], axis_sizes: Sequence[int]) -> int | None:
    """The axis if this dim is exactly one whole spatial axis, else None."""
    if len(atoms) == 1 and atoms[0][0] == "s" and atoms[0][3] == 1 and atoms[0][2] == axis_sizes[atoms[0][1]]:
        return atoms[0][1]
    return None


def merge_adjacent(atoms: Sequence[Atom]) -> tuple[Atom, ...]:
    """Join neighbouring factors of one axis (outer then inner) and neighbouring non-spatial atoms."""
    out: list[Atom] = []
    for atom in atoms:
        if out:
            kind, axis, size, inner = out[-1]
            if kind == "n" and atom[0] == "n":
                out[-1] = ("n", -1, size * atom[2], 1)
                continue
            if kind == "s" and atom[0] == "s" and axis == atom[1] and inner == atom[2] * atom[3]:
                out[-1] = ("s", axis, size * atom[2], atom[3])
                continue
        out.append(atom)
    return tuple(out)


def _ones(seq: Sequence) -> int:
    """How many leading entries have size 1 (atoms: their size; sizes: themselves)."""
    n = 0
    for x in seq:
        if (x[2] if isinstance(x, tuple) else x) != 1:
            break
        n += 1
    return n


def regroup(dims: Dims, new_shape: Sequence[int]) -> Dims:
    """Atoms of each dim after ``view``/``reshape`` to ``new_shape`` (same number of elements)."""
    for i, atoms in enumerate(dims):
        if prefix(atoms):  # a dim with prefix tokens moves whole: split the view around it
            before = math.prod(size_of(d) for d in dims[:i])
            for j in range(len(new_shape)):
                if math.prod(new_shape[:j]) == before and new_shape[j] == size_of(atoms):
                    return regroup(dims[:i], new_shape[:j]) + (tuple(atoms),) + regroup(dims[i + 1:], new_shape[j + 1:])
            raise RegroupError("a view splits or merges a dim that holds prefix tokens")
    queue = [a for d in dims for a in d]
    result: list[tuple[Atom, ...]] = []
    for j, m in enumerate(new_shape):
        got: list[Atom] = []
        prod = 1
        while prod < m:
            if not queue:
                raise RegroupError("sizes do not match")
            atom = queue.pop(0)
            need = m // prod
            if m % prod == 0 and need % atom[2] == 0:
                got.append(atom)
                prod *= atom[2]
            elif m % prod == 0 and atom[2] % need == 0:  # split: outer factor here, the rest later
                kind, axis, size, inner = atom
                got.append((kind, axis, need, inner * (size // need) if kind == "s" else 1))
                queue.insert(0, (kind, axis, size // need, inner))
                prod *= need
            elif atom[0] == "n" and queue and queue[0][0] == "n":  # regroup plain channels freely
                queue.insert(0, ("n", -1, atom[2] * queue.pop(0)[2], 1))
            else:
                raise RegroupError(f"a view regroups spatial factor {atom} across dims of size {tuple(new_shape)}")
        last = j == len(new_shape) - 1
        if m == 1 and queue and queue[0][2] == 1 and _ones(queue) >= _ones(new_shape[j:]):
            got.append(queue.pop(0))  # size-1 atoms fill the last of a run of size-1 slots ([1, 1, 1, C]: not B)
        # size-1 spatial atoms (an axis of size 1) stay with this dim unless the next dim is a size-1 slot
        while queue and queue[0][2] == 1 and (last or new_shape[j + 1] != 1):
            got.append(queue.pop(0))
        if prod != m:
            raise RegroupError("sizes do not match")
        result.append(merge_adjacent(got))
    if queue:
        raise RegroupError("sizes do not match")
    return tuple(result)
