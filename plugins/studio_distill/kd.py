"""Knowledge-distillation training loop (torch).

loss = (1 - alpha) * KL(softmax(teacher / T) || softmax(student / T)) * T^2
       + alpha * CE(student, labels)                       (only when labels are given)
       + hint_weight * sum_l MSE(student_l, teacher_l[:, kept]) / var(teacher_l)   (hint layers)

For outputs that are not class logits (rank > 2, e.g. hidden states) the KL term is replaced by an
MSE to the teacher's output. A held-back split of the training data is scored with the
distillation term only every ``eval_every`` steps; the best state is kept and restored at the end,
and also when the job is cancelled (``report`` raises JobCancelled): a cancel means "stop
training now and keep the best checkpoint".
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from studio.core.errors import JobCancelled


@dataclass(frozen=True)
class KDConfig:
    steps: int = 200
    lr: float = 1e-3
    batch_size: int = 64
    temperature: float = 4.0
    alpha: float = 0.5  # weight of the hard-label loss when labels exist
    hint_weight: float = 0.0
    seed: int = 0
    val_fraction: float = 0.1
    eval_every: int = 10
    weight_decay: float = 0.0
    threads: int = 1


@dataclass
class Hint:
    """Match ``student`` module output to ``teacher`` module output (channels ``index`` on dim 1)."""

    name: str
    student: nn.Module
    teacher: nn.Module
    index: torch.Tensor | None = None


@dataclass
class KDResult:
    best_step: int
    best_val_loss: float
    history: list[dict] = field(default_factory=list)  # {"step", "loss", "val_loss"}
    cancelled: bool = False
    steps_done: int = 0
    seconds: float = 0.0
    n_train: int = 0
    n_val: int = 0


def first_output(out):
    return out[0] if isinstance(out, tuple | list) else out


def distill_term(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) at temperature T, scaled by T^2; MSE for non-logit outputs."""
    if s.dim() != 2:
        return F.mse_loss(s, t)
    T = temperature
    return F.kl_div(
        F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), log_target=True, reduction="batchmean"
    ) * (T * T)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, val) split; val is empty when there are fewer than 10 samples."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = int(round(n * val_fraction)) if n >= 10 else 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class _Capture:
    def __init__(self, module: nn.Module):
        self.value = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, _m, _args, out):
        self.value = first_output(out)

    def remove(self):
        self.handle.remove()


def _freeze_bn(model: nn.Module) -> None:
    # Small fine-tuning sets give noisy batch statistics: keep BN running stats as trained.
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def train_kd(
    student: nn.Module,
    teacher: nn.Module,
    inputs: list[np.ndarray],
    cfg: KDConfig,
    *,
    labels: np.ndarray | None = None,
    hints: list[Hint] | None = None,
    report: Callable[[float, str, dict], None] | None = None,
) -> KDResult:
    """Train ``student`` in place to mimic ``teacher`` on ``inputs`` (arrays in forward-arg order).

    ``report(fraction, message, payload)`` is called every step with payload
    ``{"step", "loss", "val_loss", "best_step"}``; if it raises JobCancelled, training stops and
    the best checkpoint is restored (``result.cancelled`` is True).
    """
    t0 = time.time()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    hints = hints or []
    n = len(inputs[0])
    tr, va = split_indices(n, cfg.val_fraction, cfg.seed)
    xs = [torch.from_numpy(np.ascontiguousarray(a)) for a in inputs]
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64)) if labels is not None else None
    teacher.eval()
    with torch.no_grad():
        t_val = first_output(teacher(*[x[va] for x in xs])) if len(va) else None
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / max(cfg.steps, 1)))
    )
    caps = [(h, _Capture(h.student), _Capture(h.teacher)) for h in hints]
    g = torch.Generator().manual_seed(cfg.seed)
    bs = max(1, min(cfg.batch_size, len(tr)))

    def val_loss() -> float:
        if t_val is None:
            return float("nan")
        student.eval()
        with torch.no_grad():
            s = first_output(student(*[x[va] for x in xs]))
            v = float(distill_term(s, t_val, cfg.temperature))
        student.train()
        _freeze_bn(student)
        return v

    res = KDResult(best_step=0, best_val_loss=val_loss(), n_train=len(tr), n_val=len(va))
    best_state = copy.deepcopy(student.state_dict())
    last_val = res.best_val_loss
    student.train()
    _freeze_bn(student)
    perm = tr[torch.randperm(len(tr), generator=g).numpy()]
    pos = 0
    try:
        for step in range(1, cfg.steps + 1):
            if pos + bs > len(perm):
                perm, pos = tr[torch.randperm(len(tr), generator=g).numpy()], 0
            idx = torch.from_numpy(perm[pos : pos + bs])
            pos += bs
            batch = [x[idx] for x in xs]
            with torch.no_grad():
                t_out = first_output(teacher(*batch))
            s_out = first_output(student(*batch))
            loss = distill_term(s_out, t_out, cfg.temperature)
            if y is not None and s_out.dim() == 2:
                loss = (1 - cfg.alpha) * loss + cfg.alpha * F.cross_entropy(s_out, y[idx])
            for h, cs, ct in caps:
                tv = ct.value if h.index is None else ct.value.index_select(1, h.index)
                if cs.value is not None and tv is not None and cs.value.shape == tv.shape:
                    loss = loss + cfg.hint_weight * F.mse_loss(cs.value, tv) / tv.var().clamp_min(1e-8)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            res.steps_done = step
            if step % max(cfg.eval_every, 1) == 0 or step == cfg.steps:
                last_val = val_loss()
                # Without a held-back split, the last state is kept.
                if t_val is None or last_val < res.best_val_loss:
                    res.best_val_loss, res.best_step = last_val, step
                    best_state = copy.deepcopy(student.state_dict())
            point = {"step": step, "loss": loss.item(), "val_loss": last_val, "best_step": res.best_step}
            res.history.append(point)
            if report is not None:
                report(step / cfg.steps, f"distill step {step}/{cfg.steps}: loss {loss.item():.4f}", point)
    except JobCancelled:
        res.cancelled = True
    finally:
        for _h, cs, ct in caps:
            cs.remove()
            ct.remove()
        student.load_state_dict(best_state)
        student.eval()
        torch.set_num_threads(old_threads)
        res.seconds = time.time() - t0
    return res
