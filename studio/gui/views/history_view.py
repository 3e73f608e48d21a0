"""History dock: the variants as a tree (a variant's children were branched from its recipe).

Branch loads a variant's recipe into the table (through the undo stack, done by the window);
rename and annotate edit in place; delete asks first. The view only emits requests; the window
changes the session and the workspace and then calls `set_variants` again.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QMessageBox,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from studio.gui.state import VariantEntry

NAME, QUALITY, SIZE, NOTE = range(4)
ID_ROLE = Qt.ItemDataRole.UserRole + 1


def _fmt_size(e: VariantEntry) -> str:
    m = e.size()
    if m is None:
        return ""
    kb = m.value / 1024
    return f"{kb / 1024:.2f} MB" if kb >= 1024 else f"{kb:.1f} kB"


class HistoryView(QWidget):
    """Variants tree with Branch / Rename / Note / Delete."""

    branch_requested = Signal(str)
    rename_requested = Signal(str, str)
    note_requested = Signal(str, str)
    delete_requested = Signal(str)
    variant_selected = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Variant", "Quality", "Size", "Note"])
        self.tree.setUniformRowHeights(True)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.tree.setEditTriggers(
            QAbstractItemView.EditTrigger.EditKeyPressed | QAbstractItemView.EditTrigger.SelectedClicked
        )
        h = self.tree.header()
        h.setStretchLastSection(True)
        h.setSectionResizeMode(NAME, QHeaderView.ResizeMode.Interactive)
        h.resizeSection(NAME, 170)
        for c in (QUALITY, SIZE):
            h.setSectionResizeMode(c, QHeaderView.ResizeMode.ResizeToContents)
        self.tree.itemChanged.connect(self._item_changed)
        self.tree.itemDoubleClicked.connect(self._double_clicked)
        self.tree.currentItemChanged.connect(self._current_changed)
        self.btn_branch = QPushButton("Branch")
        self.btn_branch.setToolTip(
            "load this variant's recipe into the table; new variants become its children"
        )
        self.btn_rename = QPushButton("Rename…")
        self.btn_note = QPushButton("Note…")
        self.btn_delete = QPushButton("Delete…")
        self.btn_branch.clicked.connect(lambda: self._emit(self.branch_requested))
        self.btn_rename.clicked.connect(self._rename_dialog)
        self.btn_note.clicked.connect(self._note_dialog)
        self.btn_delete.clicked.connect(self.confirm_delete)
        row = QHBoxLayout()
        for b in (self.btn_branch, self.btn_rename, self.btn_note, self.btn_delete):
            row.addWidget(b)
        row.addStretch(1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addLayout(row)
        lay.addWidget(self.tree, 1)
        self._filling = False
        self._update_buttons()

    # ------------------------------------------------------------------ data

    def set_variants(self, entries: list[VariantEntry], current: str | None = None) -> None:
        """Rebuild the tree: the original is the root, children under the variant they came from."""
        self._filling = True
        try:
            self.tree.clear()
            ids = {e.id for e in entries}
            items: dict[str, QTreeWidgetItem] = {}
            root = None
            for e in entries:
                if e.is_original:
                    root = self._item(e)
                    self.tree.addTopLevelItem(root)
                    items[e.id] = root
            pending = [e for e in entries if not e.is_original]
            # Parents come before children in creation order, but be robust to any order.
            for _ in range(len(pending) + 1):
                rest = []
                for e in pending:
                    parent_id = e.parent if e.parent in ids else None
                    host = items.get(parent_id) if parent_id else root
                    if parent_id and host is None:
                        rest.append(e)
                        continue
                    it = self._item(e)
                    (host.addChild(it) if host is not None else self.tree.addTopLevelItem(it))
                    items[e.id] = it
                pending = rest
                if not pending:
                    break
            self.tree.expandAll()
            # Grow the Variant column to show the longest (indented) label, up to 320 px; never
            # shrink it under a width the user chose.
            fit = min(max(self.tree.sizeHintForColumn(NAME) + 12, 170), 320)
            if fit > self.tree.header().sectionSize(NAME):
                self.tree.header().resizeSection(NAME, fit)
            if current and current in items:
                self.tree.setCurrentItem(items[current])
        finally:
            self._filling = False
        self._update_buttons()

    def _item(self, e: VariantEntry) -> QTreeWidgetItem:
        q = e.quality()
        qtext = f"{q.value:.4f}" if q is not None else "—"
        it = QTreeWidgetItem([e.label, qtext, _fmt_size(e), e.note])
        it.setData(NAME, ID_ROLE, e.id)
        tip = [e.label, f"recipe: {e.recipe.summary()}"]
        if q is not None:
            tip.append(f"{q.name} {q.value:.4f} ({q.kind} on {q.n_samples} samples)")
        if e.note:
            tip.append(f"note: {e.note}")
        for c in range(4):
            it.setToolTip(c, "\n".join(tip))
        if q is not None:
            it.setTextAlignment(QUALITY, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        it.setTextAlignment(SIZE, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if not e.is_original:
            it.setFlags(it.flags() | Qt.ItemFlag.ItemIsEditable)
        else:
            f = it.font(NAME)
            f.setBold(True)
            it.setFont(NAME, f)
        return it

    def item_for(self, vid: str) -> QTreeWidgetItem | None:
        for it in self._all_items():
            if it.data(NAME, ID_ROLE) == vid:
                return it
        return None

    def _all_items(self) -> list[QTreeWidgetItem]:
        out, stack = [], [self.tree.topLevelItem(i) for i in range(self.tree.topLevelItemCount())]
        while stack:
            it = stack.pop(0)
            out.append(it)
            stack.extend(it.child(i) for i in range(it.childCount()))
        return out

    def current_id(self) -> str | None:
        it = self.tree.currentItem()
        return it.data(NAME, ID_ROLE) if it is not None else None

    def select(self, vid: str) -> None:
        it = self.item_for(vid)
        if it is not None:
            self.tree.setCurrentItem(it)

    # ------------------------------------------------------------------ interaction

    def _emit(self, signal) -> None:
        vid = self.current_id()
        if vid:
            signal.emit(vid)

    def _current_changed(self, cur, _prev) -> None:
        self._update_buttons()
        if not self._filling and cur is not None:
            self.variant_selected.emit(cur.data(NAME, ID_ROLE))

    def _double_clicked(self, item: QTreeWidgetItem, column: int) -> None:
        if column == NAME and item.data(NAME, ID_ROLE) != "original":
            return  # the name cell edits in place (Qt handles it)
        self.branch_requested.emit(item.data(NAME, ID_ROLE))

    def _item_changed(self, item: QTreeWidgetItem, column: int) -> None:
        if self._filling:
            return
        vid = item.data(NAME, ID_ROLE)
        if column == NAME and item.text(NAME).strip():
            self.rename_requested.emit(vid, item.text(NAME).strip())
        elif column == NOTE:
            self.note_requested.emit(vid, item.text(NOTE))

    def _update_buttons(self) -> None:
        vid = self.current_id()
        is_variant = bool(vid) and vid != "original"
        self.btn_branch.setEnabled(bool(vid))
        for b in (self.btn_rename, self.btn_note, self.btn_delete):
            b.setEnabled(is_variant)

    def _rename_dialog(self) -> None:
        it = self.tree.currentItem()
        if it is None:
            return
        name, ok = QInputDialog.getText(self, "Rename variant", "Name:", text=it.text(NAME))
        if ok and name.strip():
            self.rename_requested.emit(it.data(NAME, ID_ROLE), name.strip())

    def _note_dialog(self) -> None:
        it = self.tree.currentItem()
        if it is None:
            return
        note, ok = QInputDialog.getMultiLineText(self, "Note", "Note on this variant:", it.text(NOTE))
        if ok:
            self.note_requested.emit(it.data(NAME, ID_ROLE), note)

    def confirm_delete(self) -> bool:
        """Ask, then request deletion of the current variant; returns whether it was requested."""
        it = self.tree.currentItem()
        vid = it.data(NAME, ID_ROLE) if it is not None else None
        if not vid or vid == "original":
            return False
        kids = it.childCount()
        text = f"Delete variant {it.text(NAME)!r} and its ONNX file?"
        if kids:
            text += f"\nIts {kids} child variant(s) move up to its parent."
        box = QMessageBox(QMessageBox.Icon.Warning, "Delete variant", text,
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, self)  # fmt: skip
        box.setDefaultButton(QMessageBox.StandardButton.No)
        if box.exec() != QMessageBox.StandardButton.Yes:
            return False
        self.delete_requested.emit(vid)
        return True
