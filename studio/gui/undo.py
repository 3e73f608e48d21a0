"""Undo commands: every plan edit replaces the Recipe (immutable) through one command.

Consecutive edits of the same cell(s) within a short time merge into one step, so dragging a
spin box or slider through 20 values is undone with a single Ctrl+Z.
"""

from __future__ import annotations

import time
from typing import Protocol

from PySide6.QtGui import QUndoCommand

from studio.core.recipe import Recipe

MERGE_ID = 0x5EC1
MERGE_WINDOW_S = 1.5


class RecipeTarget(Protocol):
    def apply_recipe(self, recipe: Recipe) -> None: ...


class SetRecipeCommand(QUndoCommand):
    """Replace the current recipe with `new`; undo restores `old`.

    `merge_key` (e.g. (layer names, column)) lets repeated edits of the same cells merge."""

    def __init__(self, target: RecipeTarget, old: Recipe, new: Recipe, text: str, merge_key=None):
        super().__init__(text)
        self.target = target
        self.old = old
        self.new = new
        self.merge_key = merge_key
        self.last_edit = time.monotonic()

    def id(self) -> int:  # noqa: A003 - Qt API name
        return MERGE_ID if self.merge_key is not None else -1

    def mergeWith(self, other: QUndoCommand) -> bool:  # noqa: N802 - Qt API name
        if not isinstance(other, SetRecipeCommand) or other.merge_key != self.merge_key:
            return False
        if other.last_edit - self.last_edit > MERGE_WINDOW_S:
            return False
        self.new = other.new
        self.last_edit = other.last_edit
        self.setText(other.text())
        return True

    def redo(self) -> None:
        self.target.apply_recipe(self.new)

    def undo(self) -> None:
        self.target.apply_recipe(self.old)


def push_recipe(stack, target: RecipeTarget, old: Recipe, new: Recipe, text: str, merge_key=None) -> bool:
    """Push a recipe change unless it changes nothing; returns whether a command was pushed."""
    if new == old:
        return False
    if stack is None:
        target.apply_recipe(new)
        return True
    stack.push(SetRecipeCommand(target, old, new, text, merge_key))
    return True
