"""What every stage function needs besides its element: the recipes, the keyed pseudonymizer, run options."""
from __future__ import annotations

from dataclasses import dataclass, field

from medcurate.schemas.recipe import Recipe
from medcurate.transforms.pseudonym import Pseudonymizer


@dataclass(frozen=True)
class Context:
    recipes: dict  # dataset id -> Recipe
    pseudo: Pseudonymizer
    device: str = "auto"  # resample/DRR backend: auto | cpu | gpu
    split_ratios: tuple = (("train", 0.8), ("val", 0.1), ("test", 0.1))
    folds: int = 5
    options: dict = field(default_factory=dict)

    def recipe(self, dataset: str) -> Recipe:
        return self.recipes[dataset]

    def __repr__(self) -> str:  # the pseudonymizer holds the key: keep reprs short and key-free
        return f"Context(datasets={sorted(self.recipes)}, device={self.device!r})"
