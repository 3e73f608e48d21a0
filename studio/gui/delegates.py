"""Item delegates of the layer table: an inline share bar for sizes, in-place plan editors.

Plan editors commit on every value change (live estimates while the user spins a value); the
undo stack merges those commits into one step. With several rows selected, the table widget
routes the commit to all of them.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QModelIndex, QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPalette, QStandardItemModel
from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QSpinBox, QStyle, QStyledItemDelegate

from studio.gui.models.layer_table import NAME_ROLE, PLAN_COL, SHARE_ROLE
from studio.gui.state import PRECISION_CHOICES, Session


class ShareBarDelegate(QStyledItemDelegate):
    """Draws the cell's share of the model total (SHARE_ROLE, 0..1) as a bar behind the text."""

    def paint(self, painter: QPainter, option, index: QModelIndex) -> None:
        share = index.data(SHARE_ROLE)
        if isinstance(share, float) and share > 0 and not (option.state & QStyle.StateFlag.State_Selected):
            painter.save()
            r = QRectF(option.rect).adjusted(2, 3, -2, -3)
            r.setWidth(max(1.0, r.width() * min(share, 1.0)))
            c = QColor(option.palette.color(QPalette.ColorRole.Highlight))
            c.setAlpha(70)
            painter.fillRect(r, c)
            painter.restore()
        super().paint(painter, option, index)


class PlanDelegate(QStyledItemDelegate):
    """Editors for Prune / Rank (percent spin box), Precision (combo box), Sharing (bits).

    `commit(index, value)` applies a value; the default writes through `model.setData`."""

    def __init__(
        self, session: Session, parent=None, commit: Callable[[QModelIndex, object], None] | None = None
    ):
        super().__init__(parent)
        self.session = session
        self.commit = commit
        self._loading = False

    def createEditor(self, parent, option, index):  # noqa: N802 - Qt API
        col = PLAN_COL.get(index.column())
        if col is None:
            return super().createEditor(parent, option, index)
        if col.kind == "choice":
            ed = QComboBox(parent)
            ed.addItems(list(PRECISION_CHOICES))
            layer = self.session.layer(index.data(NAME_ROLE) or "")
            model = ed.model()
            if layer is not None and isinstance(model, QStandardItemModel):
                for i, tech in enumerate(PRECISION_CHOICES.values()):
                    if tech is None:
                        continue
                    sup = self.session.support.get(tech, layer)
                    if not sup:
                        item = model.item(i)
                        item.setEnabled(False)
                        item.setToolTip(sup.reason)
            ed.currentTextChanged.connect(lambda _t, e=ed: self._changed(e))
            return ed
        if col.kind == "bits":
            ed = QSpinBox(parent)
            ed.setRange(1, 8)  # 1 is shown as "none"; k-means needs >= 2 bits
            ed.setSpecialValueText("none")
            ed.setSuffix(" bit")
            ed.valueChanged.connect(lambda _v, e=ed: self._changed(e))
            return ed
        ed = QDoubleSpinBox(parent)
        ed.setDecimals(0)
        ed.setRange(0, 95 if col.key == "prune" else 100)
        ed.setSingleStep(5)
        ed.setSuffix(" %")
        ed.setSpecialValueText("none")
        ed.setToolTip("fraction of channels removed" if col.key == "prune" else "kept rank as % of full rank")
        ed.valueChanged.connect(lambda _v, e=ed: self._changed(e))
        return ed

    def _changed(self, editor) -> None:
        if not self._loading:
            self.commitData.emit(editor)

    def setEditorData(self, editor, index):  # noqa: N802 - Qt API
        col = PLAN_COL.get(index.column())
        if col is None:
            return super().setEditorData(editor, index)
        v = index.data(Qt.ItemDataRole.EditRole)
        self._loading = True
        try:
            if isinstance(editor, QComboBox):
                editor.setCurrentText(str(v or "fp32"))
            elif isinstance(editor, QSpinBox):
                editor.setValue(int(v) if v else 1)
            else:
                editor.setValue(round(float(v) * 100) if v else 0)
        finally:
            self._loading = False

    def editor_value(self, editor):
        """The plan value an editor holds (None = no step)."""
        if isinstance(editor, QComboBox):
            return editor.currentText()
        if isinstance(editor, QSpinBox):
            return editor.value() if editor.value() >= 2 else None
        return editor.value() / 100.0 if editor.value() > 0 else None

    def setModelData(self, editor, model, index):  # noqa: N802 - Qt API
        if PLAN_COL.get(index.column()) is None:
            return super().setModelData(editor, model, index)
        value = self.editor_value(editor)
        if self.commit is not None:
            self.commit(index, value)
        else:
            model.setData(index, value, Qt.ItemDataRole.EditRole)

    def updateEditorGeometry(self, editor, option, index):  # noqa: N802 - Qt API
        editor.setGeometry(option.rect)


class ElideRightDelegate(QStyledItemDelegate):
    """Plain cells that elide at the end (the view elides names in the middle): a shape text
    "16×8×8 → 32×8×8" keeps its input side readable instead of losing the arrow."""

    def initStyleOption(self, option, index: QModelIndex) -> None:  # noqa: N802 - Qt API
        super().initStyleOption(option, index)
        option.textElideMode = Qt.TextElideMode.ElideRight
