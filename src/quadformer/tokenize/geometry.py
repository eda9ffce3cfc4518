"""Quadtree geometry: scales, grids, legal token budgets (docs/design/mixed_resolution.md §1, §4).

A :class:`QuadGeometry` is immutable and hashable, so per-geometry index tables can be
cached by value (never by tensor identity).
"""

from __future__ import annotations

from dataclasses import dataclass
from ..utils.errors import QuadformerError


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def _check_patch_sizes(p_min: int, p_max: int) -> int:
    """Validate the patch-size pair and return the number of scales L."""
    if int(p_min) != p_min or p_min < 1:
        raise QuadformerError(f"p_min={p_min} is illegal: the smallest patch side must be an integer >= 1")
    if int(p_max) != p_max or p_max < p_min or not _is_power_of_two(p_max // p_min) or p_max % p_min:
        raise QuadformerError(
            f"p_max={p_max} is illegal for p_min={p_min}: p_max/p_min must be a power of two "
            f"(e.g. p_max={p_min * 2} or {p_min * 4})"
        )
    return (p_max // p_min).bit_length()


def _check_image_size(height: int, width: int, p_max: int) -> None:
    if height <= 0 or width <= 0 or height % p_max or width % p_max:
        def near(v: int) -> str:
            lo = (v // p_max) * p_max
            return f"{lo} or {lo + p_max}" if lo > 0 else f"{p_max}"
        raise QuadformerError(
            f"image size {height}x{width} is not a multiple of p_max={p_max} on both axes; "
            f"use height {near(height)} and width {near(width)}, or a smaller p_max"
        )


def legal_budgets(height: int, width: int, p_min: int, p_max: int) -> list[int]:
    """All exact token budgets N reachable by quadtree splits: N0 + 3k, N0 <= N <= Nmax."""
    _check_patch_sizes(p_min, p_max)
    _check_image_size(height, width, p_max)
    n0 = (height // p_max) * (width // p_max)
    nmax = (height // p_min) * (width // p_min)
    return list(range(n0, nmax + 1, 3))


def nearest_legal_budgets(n: int, height: int, width: int, p_min: int, p_max: int) -> list[int]:
    """The legal budgets just below and above ``n`` (one value if ``n`` is legal or out of range)."""
    n0 = (height // p_max) * (width // p_max)
    nmax = (height // p_min) * (width // p_min)
    if n <= n0:
        return [n0]
    if n >= nmax:
        return [nmax]
    below = n0 + 3 * ((n - n0) // 3)
    if below == n:
        return [n]
    return [below, below + 3]


@dataclass(frozen=True)
class QuadGeometry:
    """Image size, patch-size range and exact token budget of a mosaic.

    Scales ``s = 0..L-1`` have patch side ``p_min * 2**s``; only scales ``s >= 1`` split.
    ``num_patches`` (N) must equal ``N0 + 3k`` for ``k`` splits.
    """

    height: int
    width: int
    p_min: int
    p_max: int
    num_patches: int

    def __post_init__(self) -> None:
        _check_patch_sizes(self.p_min, self.p_max)
        _check_image_size(self.height, self.width, self.p_max)
        n, n0, nmax = self.num_patches, self.n0, self.nmax
        if n0 <= n <= nmax and (n - n0) % 3 == 0:
            return
        geo = (
            f"{self.height}x{self.width}, patches {self.p_min}..{self.p_max} "
            f"({n0}+3k, max {nmax})"
        )
        if n < n0:
            hint = f"the minimum is {n0}"
        elif n > nmax:
            hint = f"the maximum is {nmax}"
        else:
            hint = "nearest: " + ", ".join(map(str, nearest_legal_budgets(n, *self._hw_p)))
        raise QuadformerError(f"N={n} impossible for {geo}; {hint}")

    @property
    def _hw_p(self) -> tuple[int, int, int, int]:
        return self.height, self.width, self.p_min, self.p_max

    @property
    def num_scales(self) -> int:
        """L = log2(p_max / p_min) + 1."""
        return (self.p_max // self.p_min).bit_length()

    @property
    def num_splits(self) -> int:
        """k, the number of quadtree splits that reach the budget."""
        return (self.num_patches - self.n0) // 3

    @property
    def n0(self) -> int:
        return (self.height // self.p_max) * (self.width // self.p_max)

    @property
    def nmax(self) -> int:
        return (self.height // self.p_min) * (self.width // self.p_min)

    def patch_size(self, scale: int) -> int:
        return self.p_min << scale

    def grid(self, scale: int) -> tuple[int, int]:
        """(rows, cols) of the uniform grid of patches at ``scale``."""
        p = self.patch_size(scale)
        return self.height // p, self.width // p

    @property  # not cached_property: its lock (Python 3.11) stops torch.compile
    def num_internal(self) -> int:
        """T: number of splittable nodes (scales 1..L-1)."""
        return sum(gh * gw for gh, gw in (self.grid(s) for s in range(1, self.num_scales)))

    @property  # not cached_property: its lock (Python 3.11) stops torch.compile
    def num_cells(self) -> int:
        """M: number of cells over all scales 0..L-1."""
        return sum(gh * gw for gh, gw in (self.grid(s) for s in range(self.num_scales)))

    def with_budget(self, num_patches: int) -> "QuadGeometry":
        return QuadGeometry(self.height, self.width, self.p_min, self.p_max, num_patches)

    def legal_budgets(self) -> list[int]:
        return legal_budgets(*self._hw_p)
