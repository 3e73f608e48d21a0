"""A small CNN for the scikit-learn digits set (8x8 grey images).

Input: float32 tensor ``[N, 1, 8, 8]`` with values in ``[0, 1]`` (pixel / 16). Output: ``[N, 10]`` logits.

``build_model`` is the factory used by ``studio.backends.torch_loader`` as
``studio.demos.digits:build_model``; ``EXAMPLE_INPUT_SHAPE`` tells the exporter the input shape.
torch is imported inside functions so that importing this module stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

EXAMPLE_INPUT_SHAPE = (1, 1, 8, 8)
N_HELDOUT = 360
N_CLASSES = 10


def _make_class():
    """Define ``DigitsCNN`` (needs torch). Called lazily through the module ``__getattr__`` so that
    the class is importable (and picklable) as ``studio.demos.digits.DigitsCNN`` without importing
    torch when this module is imported."""
    from torch import nn

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    class DigitsCNN(nn.Module):
        example_input_shape = EXAMPLE_INPUT_SHAPE

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = block(1, 16)
            self.conv2 = block(16, 32)
            self.conv3 = block(32, 64)
            self.pool = nn.MaxPool2d(2)
            self.flatten = nn.Flatten()
            self.fc1 = nn.Linear(64 * 4 * 4, 256)
            self.relu = nn.ReLU(inplace=True)
            self.fc2 = nn.Linear(256, N_CLASSES)

        def forward(self, x):
            x = self.conv3(self.conv2(self.conv1(x)))
            x = self.flatten(self.pool(x))
            return self.fc2(self.relu(self.fc1(x)))

    DigitsCNN.__module__ = __name__
    DigitsCNN.__qualname__ = "DigitsCNN"
    return DigitsCNN


def __getattr__(name: str):
    if name == "DigitsCNN":
        cls = _make_class()
        globals()["DigitsCNN"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_model() -> nn.Module:
    """Return the untrained digits CNN (about 290k parameters)."""
    cls = globals().get("DigitsCNN") or __getattr__("DigitsCNN")
    return cls()


def load_digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic stratified split of sklearn's digits.

    Returns ``(X_train, y_train, X_heldout, y_heldout)``; X is float32 ``[N, 1, 8, 8]`` in [0, 1],
    y is int64. The held-out part has exactly 360 samples.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    ds = load_digits()
    X = (ds.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = ds.target.astype(np.int64)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=N_HELDOUT, stratify=y, random_state=seed)
    return (
        np.ascontiguousarray(X_tr),
        np.ascontiguousarray(y_tr),
        np.ascontiguousarray(X_te),
        np.ascontiguousarray(y_te),
    )


def _augment(xb, generator):
    """Random shifts by up to one pixel (zero padded); keeps training deterministic via ``generator``."""
    import torch

    n = xb.shape[0]
    padded = torch.nn.functional.pad(xb, (1, 1, 1, 1))
    dx = torch.randint(0, 3, (n,), generator=generator)
    dy = torch.randint(0, 3, (n,), generator=generator)
    out = torch.empty_like(xb)
    for i in range(3):
        for j in range(3):
            m = (dy == i) & (dx == j)
            if m.any():
                out[m] = padded[m, :, i : i + 8, j : j + 8]
    return out


def train(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    epochs: int = 30,
    seed: int = 0,
    *,
    batch_size: int = 64,
    lr: float = 3e-3,
    augment: bool = True,
) -> nn.Module:
    """Train ``model`` in place with AdamW + one-cycle LR; deterministic for a given seed. Returns it in eval mode."""
    import torch

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    Xt = torch.from_numpy(np.asarray(X, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    n = Xt.shape[0]
    steps_per_epoch = (n + batch_size - 1) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.05)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for k in range(steps_per_epoch):
            idx = perm[k * batch_size : (k + 1) * batch_size]
            xb, yb = Xt[idx], yt[idx]
            if augment:
                xb = _augment(xb, g)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


def accuracy(model: nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a torch model on numpy data."""
    import torch

    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(np.asarray(X, dtype=np.float32))).argmax(1).numpy()
    return float((pred == np.asarray(y)).mean())
