"""How a map combines its modalities at each pixel: the fusion rules and the source codes.

Part of the engine (io -> tiling -> engine -> writers): for every block the engine has
each modality's per-pixel probabilities and where they are valid (nodata and masked
pixels are not), and a :class:`FusionRule` turns them into the map's probabilities and a
*source* code per pixel, which evidence decided it (the ``source`` output raster):

- where every modality is valid, the rule's fusion (:data:`FUSED`; ``confident`` names
  the branch it took instead);
- where one is, that branch's own probabilities, unchanged (:data:`SOURCE_CODES`);
- where none is, nothing (:data:`NONE`; the map is nodata there).

The rules, one small class each behind :data:`RULES` (the ``fusion`` mapping setting
names one): ``product`` (naive Bayes: the normalised product of the branches'
probabilities; the classes' training prior is uniform, so dividing by it changes
nothing), ``weighted`` (the product with each branch's probabilities raised to a weight
from its measured accuracy), ``confident`` (the branch with the higher winning
probability) and ``average`` (the mean of the probabilities, the only rule before them).
``product`` is the default: chosen on validation scenes, see
``docs/guide/per-pixel-fusion.md``. Everything is per pixel, so the result never depends
on how the map is cut into blocks or chunks.
"""

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from ..constants import MS, SAR
from ..errors import SettingsError

#: Source code of pixels no modality had valid data for (nodata in the map).
NONE = 0
#: Source code of pixels decided by the fusion of several modalities.
FUSED = 3
#: Source code of pixels not computed (outside the area of interest): the raster's nodata.
SOURCE_NODATA = 255
#: Source code of the pixels one modality alone decided.
SOURCE_CODES = {MS: 1, SAR: 2}
#: Colours of the source codes: grey none, orange MS, blue SAR, green fused.
SOURCE_COLORS = {NONE: (150, 150, 150), SOURCE_CODES[MS]: (240, 160, 40),
                 SOURCE_CODES[SAR]: (60, 110, 220), FUSED: (60, 170, 80)}
#: Probabilities are floored here before a product: one branch's 0 cannot veto a class
#: the others are sure of (float32 softmax outputs underflow to 0).
FLOOR = 1e-6


def source_names(modalities: Sequence[str]) -> dict[int, str]:
    """Name of each source code a map of ``modalities`` can hold (``none``, ``ms``, ...).

    Modalities other than MS and SAR take the codes after :data:`FUSED`, in input order.
    """
    names = {NONE: "none", **{code: m for m, code in SOURCE_CODES.items()}, FUSED: "fused"}
    others = [m for m in modalities if m not in SOURCE_CODES]
    names.update({FUSED + 1 + i: m for i, m in enumerate(others)})
    return names


def source_code(modality: str, modalities: Sequence[str]) -> int:
    """The source code of pixels ``modality`` alone decided in a map of ``modalities``."""
    return next(code for code, name in source_names(modalities).items() if name == modality)


#: One modality's evidence over a block: float ``(K, h, w)`` probabilities and the bool
#: ``(h, w)`` pixels where they are valid.
Evidence = tuple[np.ndarray, np.ndarray]


class FusionRule(ABC):
    """How several modalities' probabilities become one pixel's (see the module docstring).

    Subclasses name themselves (:attr:`name`) and combine the probabilities of pixels
    where every modality is valid (:meth:`combine`); :meth:`fuse` handles the pixels with
    fewer. Instances are small and picklable (they travel with the plan to workers).
    """

    #: The ``fusion`` setting's value that selects the rule.
    name: ClassVar[str]

    @abstractmethod
    def combine(self, modalities: Sequence[str], probs: Sequence[np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """Fused float64 ``(K, h, w)`` probabilities of every pixel, all branches valid.

        Returns:
            The probabilities, and the index in ``modalities`` of the branch that decided
            each pixel (``(h, w)`` ints), or ``None``: all of them (:data:`FUSED`).
        """

    def fuse(self, branches: Mapping[str, Evidence]) -> tuple[np.ndarray, np.ndarray]:
        """The map's probabilities and source codes from each modality's evidence.

        Args:
            branches: each modality's evidence, in input order.

        Returns:
            float64 ``(K, h, w)`` probabilities (zero where no modality is valid) and
            uint8 ``(h, w)`` source codes.
        """
        modalities = list(branches)
        probs = [np.asarray(p, dtype=np.float64) for p, _ in branches.values()]
        valid = np.stack([ok for _, ok in branches.values()])
        count = valid.sum(axis=0)
        codes = np.array([source_code(m, modalities) for m in modalities], dtype=np.uint8)
        # The first valid branch of each pixel: the one that decides where it is alone.
        first = valid.argmax(axis=0)
        fused = np.zeros_like(probs[0])
        for i, p in enumerate(probs):
            fused += np.where(first == i, p, 0.0)
        source = codes[first]
        if len(probs) > 1 and (both := count > 1).any():
            combined, decider = self.combine(modalities, probs)
            fused = np.where(both, combined, fused)
            source = np.where(both, FUSED if decider is None else codes[decider], source)
        fused[:, count == 0] = 0.0
        source = np.where(count == 0, NONE, source).astype(np.uint8)
        return fused, source


def _normalised_exp(log_probs: np.ndarray) -> np.ndarray:
    """Probabilities from unnormalised ``(K, h, w)`` log-probabilities (classes first)."""
    shifted = np.exp(log_probs - log_probs.max(axis=0, keepdims=True))
    return shifted / shifted.sum(axis=0, keepdims=True)


class Product(FusionRule):
    """Naive Bayes: the normalised product of the branches' (calibrated) probabilities.

    Branches that agree reinforce each other; where they disagree the more confident
    one wins only by as much as its odds exceed the other's. The training prior is
    uniform (EuroSAT's classes are balanced), so it is not divided out.
    """

    name = "product"

    def combine(self, modalities: Sequence[str], probs: Sequence[np.ndarray]
                ) -> tuple[np.ndarray, None]:
        """The normalised product of ``probs``."""
        return _normalised_exp(sum(np.log(np.maximum(p, FLOOR)) for p in probs)), None


class Weighted(FusionRule):
    """The product with each branch's probabilities raised to a weight from its accuracy.

    A branch of accuracy ``a`` over ``K`` classes weighs ``log((K - 1) a / (1 - a))``
    (the log-odds of its being right against one wrong class, the weight of an optimal
    weighted vote), scaled so that the most accurate branch weighs 1.

    Args:
        accuracy: each modality's measured accuracy (e.g. its map's OA on validation
            scenes), in ``(1/K, 1)``; clipped to ``[1/K + 0.01, 0.999]``.
        classes: how many classes the branches give.
    """

    name = "weighted"

    def __init__(self, accuracy: Mapping[str, float], classes: int) -> None:
        odds = {m: math.log((classes - 1) * a / (1 - a)) for m, a in
                ((m, min(max(a, 1 / classes + 0.01), 0.999)) for m, a in accuracy.items())}
        top = max(odds.values(), default=1.0)
        self.weights = {m: w / top for m, w in odds.items()}

    def combine(self, modalities: Sequence[str], probs: Sequence[np.ndarray]
                ) -> tuple[np.ndarray, None]:
        """The normalised product of ``probs``, each to the power of its weight."""
        return _normalised_exp(sum(self.weights[m] * np.log(np.maximum(p, FLOOR))
                                   for m, p in zip(modalities, probs, strict=True))), None


class Confident(FusionRule):
    """The branch whose winning probability is the higher (the first on a tie)."""

    name = "confident"

    def combine(self, modalities: Sequence[str], probs: Sequence[np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray]:
        """Each pixel's probabilities from its most confident branch, and which it is."""
        decider = np.stack([p.max(axis=0) for p in probs]).argmax(axis=0)
        chosen = np.zeros_like(probs[0])
        for i, p in enumerate(probs):
            chosen += np.where(decider == i, p, 0.0)
        return chosen, decider


class Average(FusionRule):
    """The mean of the branches' probabilities (the engine's only rule before the others).

    Kept for comparison: a weak branch that is confident where it is wrong drags the map
    towards its mistakes (docs/guide/per-pixel-fusion.md).
    """

    name = "average"

    def combine(self, modalities: Sequence[str], probs: Sequence[np.ndarray]
                ) -> tuple[np.ndarray, None]:
        """The mean of ``probs``."""
        return sum(probs) / len(probs), None


#: The fusion rules by name (the ``fusion`` setting's choices).
RULES: dict[str, type[FusionRule]] = {rule.name: rule for rule in
                                      (Product, Weighted, Confident, Average)}


def fusion_rule(name: str, modalities: Sequence[str], classes: int,
                accuracy: Mapping[str, float] | None = None) -> FusionRule:
    """The rule called ``name`` for a map of ``modalities``.

    Args:
        name: the rule (:data:`RULES`).
        modalities: the modalities mapped.
        classes: how many classes the branches give.
        accuracy: each modality's measured accuracy (rule ``weighted``).

    Raises:
        SettingsError: ``weighted`` for several modalities without the accuracy of each.
    """
    if name != Weighted.name:
        return RULES[name]()
    if len(modalities) > 1 and (missing := [m for m in modalities
                                            if m not in (accuracy or {})]):
        raise SettingsError("branch_accuracy", "fusion 'weighted' needs each branch's "
                                               "measured accuracy, e.g. ms=0.86,sar=0.81; "
                                               f"missing {', '.join(missing)}")
    return Weighted(accuracy or {}, classes)


def parse_accuracy(text: str) -> dict[str, float]:
    """``ms=0.86,sar=0.81`` as ``{"ms": 0.86, "sar": 0.81}``.

    Raises:
        ValueError: not ``MODALITY=NUMBER`` pairs with numbers in ``(0, 1)``.
    """
    out = {}
    for part in text.split(","):
        modality, sep, value = part.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not modality.strip() or not 0 < number < 1:
            raise ValueError(f"{part.strip()!r} is not MODALITY=ACCURACY with an accuracy "
                             "in (0, 1); write e.g. ms=0.86,sar=0.81")
        out[modality.strip()] = number
    return out
