"""Tree model of the layer table: one row per weighted layer (LayerInfo + its plan), grouped by
the name hierarchy with subtotal rows. Plan cells edit the Recipe through the undo stack.

Chains of single-child groups are folded (`encoder/layer.0`), and a group holding one layer is
replaced by that layer, so small models stay flat and transformers fold per block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PySide6.QtCore import QAbstractItemModel, QModelIndex, QObject, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFont, QPalette
from PySide6.QtWidgets import QApplication

from studio.core.graph import LayerInfo
from studio.core.recipe import Recipe
from studio.gui.state import (
    PLAN_COLUMNS,
    PRECISION,
    PlanColumn,
    Session,
    cell_text,
    cell_value,
    plan_with_cell,
)
from studio.gui.undo import push_recipe

# Columns
NAME, OP, SHAPE, PARAMS, MACS, SIZE, PRUNE, RANK, PRECISION_COL, SHARING, EST_SIZE, EST_MACS = range(12)
HEADERS = ["Name", "Op", "In → out", "Params", "MACs", "Size", "Prune", "Rank", "Precision", "Sharing",
           "Est. size", "Est. MACs"]  # fmt: skip
PLAN_COL = {
    PRUNE: PLAN_COLUMNS[0],
    RANK: PLAN_COLUMNS[1],
    PRECISION_COL: PLAN_COLUMNS[2],
    SHARING: PLAN_COLUMNS[3],
}
ESTIMATE_COLS = (EST_SIZE, EST_MACS)
NUMERIC_COLS = (PARAMS, MACS, SIZE, EST_SIZE, EST_MACS)

SORT_ROLE = Qt.ItemDataRole.UserRole + 1
NAME_ROLE = Qt.ItemDataRole.UserRole + 2  # full layer name (or group path) for filtering
SHARE_ROLE = Qt.ItemDataRole.UserRole + 3  # size share of the model total (bar delegate)
IS_GROUP_ROLE = Qt.ItemDataRole.UserRole + 4
SUPPORTED_ROLE = Qt.ItemDataRole.UserRole + 5


def fmt_count(n: float) -> str:
    n = float(n)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def fmt_bytes(n: float) -> str:
    n = float(n)
    for unit, div in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f} B"


def fmt_shape(s) -> str:
    if not s:
        return "?"
    return "×".join(str(d) if isinstance(d, int) and d > 0 else (d if isinstance(d, str) else "?") for d in s)


@dataclass(eq=False)
class Node:
    title: str
    layer: LayerInfo | None = None
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    path: tuple[str, ...] = ()

    _layers: list[LayerInfo] | None = None
    _totals: tuple[int, int, int] | None = None

    def row(self) -> int:
        return self.parent.children.index(self) if self.parent else 0

    def layers(self) -> list[LayerInfo]:
        if self.layer is not None:
            return [self.layer]
        if self._layers is None:  # the tree is rebuilt on every reset, so this never goes stale
            self._layers = [la for c in self.children for la in c.layers()]
        return self._layers

    def totals(self) -> tuple[int, int, int]:
        """(params, MACs, weight bytes) summed over the node's layers (cached)."""
        if self._totals is None:
            ls = self.layers()
            self._totals = (
                sum(la.params for la in ls),
                sum(la.macs for la in ls),
                sum(la.weight_bytes for la in ls),
            )
        return self._totals


def build_tree(layers: list[LayerInfo], grouped: bool) -> Node:
    root = Node("")
    if not grouped:
        for la in layers:
            root.children.append(Node(la.name, la, root))
        return root
    for la in layers:
        cur = root
        for k, part in enumerate(la.group):
            nxt = next((c for c in cur.children if c.layer is None and c.title == part), None)
            if nxt is None:
                nxt = Node(part, None, cur, path=la.group[: k + 1])
                cur.children.append(nxt)
            cur = nxt
        cur.children.append(Node(la.name, la, cur))
    _fold(root)
    return root


def _fold(node: Node) -> None:
    for i, c in enumerate(list(node.children)):
        if c.layer is not None:
            continue
        # A group with a single child group merges with it: `encoder` + `layer.0` -> `encoder/layer.0`.
        while len(c.children) == 1 and c.children[0].layer is None:
            only = c.children[0]
            c.title = f"{c.title}/{only.title}"
            c.path = only.path
            c.children = only.children
            for g in c.children:
                g.parent = c
        if len(c.children) == 1:  # a group of one layer is just that layer
            leaf = c.children[0]
            leaf.parent = node
            node.children[i] = leaf
        else:
            _fold(c)


class LayerTableModel(QAbstractItemModel):
    """Rows = layers (grouped); columns = costs, plan cells, estimated costs after the plan."""

    recipe_changed = Signal()

    def __init__(self, session: Session, undo_stack=None, parent: QObject | None = None):
        super().__init__(parent)
        self.session = session
        self.undo_stack = undo_stack
        self.grouped = True
        self.root = Node("")
        self._index_of: dict[str, Node] = {}
        self._italic = QFont()
        self._italic.setItalic(True)
        self._bold = QFont()
        self._bold.setBold(True)
        self.heat: dict[str, float] = {}  # layer -> drop (sensitivity colouring of the Name cell)
        self.heat_label = ""
        self.heat_scale = 0.05

    # ------------------------------------------------------------------ structure

    def reset(self) -> None:
        """Rebuild after a model was opened (or grouping changed)."""
        self.beginResetModel()
        layers = self.session.analysis.layers if self.session.analysis else []
        self.root = build_tree(layers, self.grouped)
        self._index_of = {}
        stack = [self.root]
        while stack:
            n = stack.pop()
            if n.layer is not None:
                self._index_of[n.layer.name] = n
            stack.extend(n.children)
        self.endResetModel()

    def set_heat(self, values: dict[str, float] | None, label: str = "", scale: float = 0.05) -> None:
        """Colour Name cells by a per-layer drop (green = none, red >= `scale`); None clears."""
        self.heat, self.heat_label, self.heat_scale = dict(values or {}), label, scale
        if self.rowCount():
            self.dataChanged.emit(self.index(0, NAME), self.index(self.rowCount() - 1, NAME))
            for name in self.heat:
                i = self.index_of(name)
                if i.isValid():
                    self.dataChanged.emit(i, i)

    def set_grouped(self, grouped: bool) -> None:
        if grouped != self.grouped:
            self.grouped = grouped
            self.reset()

    def node(self, index: QModelIndex) -> Node:
        return index.internalPointer() if index.isValid() else self.root

    def index_of(self, name: str, column: int = NAME) -> QModelIndex:
        n = self._index_of.get(name)
        return self.createIndex(n.row(), column, n) if n is not None else QModelIndex()

    def layer_at(self, index: QModelIndex) -> LayerInfo | None:
        return self.node(index).layer if index.isValid() else None

    def index(self, row, column, parent=QModelIndex()):
        p = self.node(parent)
        if 0 <= row < len(p.children) and 0 <= column < len(HEADERS):
            return self.createIndex(row, column, p.children[row])
        return QModelIndex()

    def parent(self, index=QModelIndex()):  # noqa: A003 - Qt API
        if not index.isValid():
            return QModelIndex()
        p = self.node(index).parent
        if p is None or p is self.root:
            return QModelIndex()
        return self.createIndex(p.row(), 0, p)

    def rowCount(self, parent=QModelIndex()):  # noqa: N802
        if parent.isValid() and parent.column() != 0:
            return 0
        return len(self.node(parent).children)

    def columnCount(self, parent=QModelIndex()):  # noqa: N802
        return len(HEADERS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return HEADERS[section]
        if role == Qt.ItemDataRole.ToolTipRole:
            if section in ESTIMATE_COLS:
                return "estimated by formula after the plan (not measured)"
            if section == SIZE:
                return "weight bytes of this layer; the bar shows its share of the model"
            if section == MACS:
                return "multiply-accumulates per sample (symbolic dims count as 1)"
            if section in PLAN_COL:
                return "double-click or F2 to edit; with several rows selected the edit applies to all"
        if role == Qt.ItemDataRole.FontRole and section in ESTIMATE_COLS:
            return self._italic
        return None

    # ------------------------------------------------------------------ data

    def _supported(self, layer: LayerInfo, col: PlanColumn):
        return self.session.support.column(col, layer, self.session.effective_plan(layer.name))

    def flags(self, index):
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        f = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
        col = PLAN_COL.get(index.column())
        if col is not None:
            n = self.node(index)
            if n.layer is not None and self._supported(n.layer, col):
                f |= Qt.ItemFlag.ItemIsEditable
            elif n.layer is None and any(self._supported(la, col) for la in n.layers()):
                f |= Qt.ItemFlag.ItemIsEditable  # edits every layer of the group that can take it
        return f

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        n = self.node(index)
        c = index.column()
        if n.layer is None:
            return self._group_data(n, c, role)
        la = n.layer
        s = self.session
        est = s.estimates.per_layer.get(la.name) if s.estimates else None
        plan = s.effective_plan(la.name)
        if role == Qt.ItemDataRole.DisplayRole:
            if c == NAME:
                prefix = "/".join(n.parent.path) if n.parent and n.parent.path else ""
                short = (
                    la.name[len(prefix) + 1 :]
                    if prefix and la.name.startswith("/" + prefix + "/")
                    else la.name
                )
                return short.lstrip("/") if prefix else la.name
            if c == OP:
                return la.op_type
            if c == SHAPE:
                ins = next((x for x in la.input_shapes if x), None)
                outs = la.output_shapes[0] if la.output_shapes else None
                return f"{fmt_shape(ins[1:] if ins else None)} → {fmt_shape(outs[1:] if outs else None)}"
            if c == PARAMS:
                return fmt_count(la.params)
            if c == MACS:
                return fmt_count(la.macs)
            if c == SIZE:
                return fmt_bytes(la.weight_bytes)
            if c in PLAN_COL:
                return cell_text(plan, PLAN_COL[c], s.registry)
            if c == EST_SIZE and est is not None:
                return fmt_bytes(est.weight_bytes)
            if c == EST_MACS and est is not None:
                return fmt_count(est.macs)
            return None
        if role == Qt.ItemDataRole.EditRole and c in PLAN_COL:
            return cell_value(plan, PLAN_COL[c], s.registry)
        if role == SORT_ROLE:
            return self._sort_value(la, c, est, plan)
        if role == NAME_ROLE:
            return la.name
        if role == IS_GROUP_ROLE:
            return False
        if role == SHARE_ROLE and c == SIZE:
            total = s.analysis.total_weight_bytes if s.analysis else 0
            return la.weight_bytes / total if total else 0.0
        if role == SUPPORTED_ROLE and c in PLAN_COL:
            return bool(self._supported(la, PLAN_COL[c]))
        if role == Qt.ItemDataRole.FontRole and c in ESTIMATE_COLS:
            return self._italic
        if role == Qt.ItemDataRole.TextAlignmentRole and c in NUMERIC_COLS:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ForegroundRole:
            if c in PLAN_COL and not self._supported(la, PLAN_COL[c]):
                return QBrush(
                    QApplication.palette().color(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text)
                )
            if c in ESTIMATE_COLS and est is not None and est.weight_bytes != la.weight_bytes:
                return QBrush(QColor(30, 140, 80))
        if role == Qt.ItemDataRole.BackgroundRole and c == NAME and la.name in self.heat:
            from studio.gui.views.sensitivity_view import drop_color

            col = drop_color(self.heat[la.name], self.heat_scale)
            col.setAlpha(150)
            return QBrush(col)
        if role == Qt.ItemDataRole.BackgroundRole and c in PLAN_COL and not self._supported(la, PLAN_COL[c]):
            return QBrush(
                QApplication.palette().color(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Window)
            )
        if role == Qt.ItemDataRole.ToolTipRole:
            if c == NAME:
                if la.name in self.heat:
                    return f"{la.name}\n{self.heat_label}: {self.heat[la.name] * 100:+.2f} points (measured)"
                return la.name
            if c == SHAPE:
                ins = next((x for x in la.input_shapes if x), None)
                outs = la.output_shapes[0] if la.output_shapes else None
                return f"per sample (batch dim dropped): {fmt_shape(ins)} → {fmt_shape(outs)}"
            if c in PLAN_COL:
                sup = self._supported(la, PLAN_COL[c])
                if not sup:
                    return f"not available for this layer: {sup.reason}"
                notes = s.estimates.notes.get(la.name) if s.estimates else None
                return "\n".join(notes) if notes else (plan.summary() if plan else "no plan")
            if c in ESTIMATE_COLS:
                notes = s.estimates.notes.get(la.name, []) if s.estimates else []
                return "\n".join(["estimated by formula", *notes])
            if c == SIZE and s.analysis:
                share = la.weight_bytes / max(s.analysis.total_weight_bytes, 1)
                return f"{la.weight_bytes:,} B ({share:.1%} of all weights, {la.dtype})"
        return None

    def _sort_value(self, la: LayerInfo, c: int, est, plan):
        if c == NAME:
            return la.name
        if c == OP:
            return la.op_type
        if c == SHAPE:
            return la.macs
        if c == PARAMS:
            return la.params
        if c == MACS:
            return la.macs
        if c == SIZE:
            return la.weight_bytes
        if c == EST_SIZE:
            return est.weight_bytes if est else la.weight_bytes
        if c == EST_MACS:
            return est.macs if est else la.macs
        if c in PLAN_COL:
            v = cell_value(plan, PLAN_COL[c], self.session.registry)
            return -1.0 if v is None else (v if isinstance(v, int | float) else str(v))
        return None

    def _group_data(self, n: Node, c: int, role):
        layers = n.layers()
        s = self.session
        if role == Qt.ItemDataRole.DisplayRole:
            if c == NAME:
                return f"{n.title}  ({len(layers)} layers)"
            if c == PARAMS:
                return fmt_count(n.totals()[0])
            if c == MACS:
                return fmt_count(n.totals()[1])
            if c == SIZE:
                return fmt_bytes(n.totals()[2])
            if c in ESTIMATE_COLS and s.estimates:
                ests = [s.estimates.per_layer[la.name] for la in layers]
                return (
                    fmt_bytes(sum(e.weight_bytes for e in ests))
                    if c == EST_SIZE
                    else fmt_count(sum(e.macs for e in ests))
                )
            return None
        if role == SORT_ROLE:
            if c == NAME:
                return n.title
            if c in (PARAMS,):
                return n.totals()[0]
            if c in (MACS, SHAPE):
                return n.totals()[1]
            if c == SIZE:
                return n.totals()[2]
            if c in ESTIMATE_COLS and s.estimates:
                ests = [s.estimates.per_layer[la.name] for la in layers]
                return sum(e.weight_bytes if c == EST_SIZE else e.macs for e in ests)
            return ""
        if role == NAME_ROLE:
            return "/".join(n.path)
        if role == IS_GROUP_ROLE:
            return True
        if role == SHARE_ROLE and c == SIZE and s.analysis:
            return n.totals()[2] / max(s.analysis.total_weight_bytes, 1)
        if role == Qt.ItemDataRole.FontRole:
            f = QFont(self._bold)
            f.setItalic(c in ESTIMATE_COLS)
            return f
        if role == Qt.ItemDataRole.TextAlignmentRole and c in NUMERIC_COLS:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ToolTipRole:
            if c in ESTIMATE_COLS:
                return "subtotal, estimated by formula"
            if c in PLAN_COL:
                return f"edit to set this for all {len(layers)} layers of the group that support it"
            return f"{'/'.join(n.path)}: subtotal of {len(layers)} layers"
        if role == Qt.ItemDataRole.EditRole and c == PRECISION_COL:
            return "fp32"
        return None

    # ------------------------------------------------------------------ editing

    def setData(self, index, value, role=Qt.ItemDataRole.EditRole):  # noqa: N802
        if role != Qt.ItemDataRole.EditRole or index.column() not in PLAN_COL:
            return False
        names = [la.name for la in self.node(index).layers()]
        return self.edit_layers(names, index.column(), value)

    def edit_layers(self, names: list[str], column: int, value) -> bool:
        """Set one plan cell on several layers as one undoable step (layers that the technique
        cannot handle are left alone)."""
        col = PLAN_COL[column]
        s = self.session
        old = s.recipe
        new = old
        touched = []
        for name in names:
            la = s.layer(name)
            if la is None or not self._supported(la, col):
                continue
            if col is PRECISION and value not in (None, "fp32"):
                from studio.gui.state import PRECISION_CHOICES

                tech = PRECISION_CHOICES.get(str(value), str(value))
                if not s.support.get(tech, la):
                    continue
            new = plan_with_cell(new, la, col, value, s.registry)
            touched.append(name)
        if not touched:
            return False
        what = touched[0] if len(touched) == 1 else f"{len(touched)} layers"
        text = f"{col.title} = {value if value not in (None, '') else 'none'} on {what}"
        key = (tuple(sorted(touched)), col.key)
        return push_recipe(self.undo_stack, self, old, new, text, merge_key=key)

    def clear_layers(self, names: list[str]) -> bool:
        """Remove the explicit plan of the given layers (one undo step)."""
        old = self.session.recipe
        new = old
        for n in names:
            new = new.with_layer(n, None)
        return push_recipe(self.undo_stack, self, old, new, f"Clear plan of {len(names)} layer(s)")

    def set_recipe(self, recipe: Recipe, text: str = "Set recipe") -> bool:
        """Replace the whole recipe (restore a variant, load a file) as one undo step."""
        return push_recipe(self.undo_stack, self, self.session.recipe, recipe, text)

    def apply_recipe(self, recipe: Recipe) -> None:
        """Undo-command target: make `recipe` current and refresh the rows whose plan changed."""
        changed = self.session.set_recipe(recipe)
        parents: set[int] = set()
        for name in changed:
            n = self._index_of.get(name)
            if n is None:
                continue
            row = n.row()
            self.dataChanged.emit(self.createIndex(row, PRUNE, n), self.createIndex(row, EST_MACS, n))
            p = n.parent
            while p is not None and p is not self.root and id(p) not in parents:
                parents.add(id(p))
                self.dataChanged.emit(
                    self.createIndex(p.row(), PRUNE, p), self.createIndex(p.row(), EST_MACS, p)
                )
                p = p.parent
        self.recipe_changed.emit()
