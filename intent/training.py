"""Train the embedded tier (scikit-learn is used here only; inference is numpy in intent.embedded_model).

1. Vocabularies and idf are fitted on the training rows.
2. The regularisation strength C of the multinomial logistic regression is chosen by stratified k-fold
   cross-validation on the training rows (log-loss), never on a test split.
3. Calibration: one temperature is fitted (minimum negative log-likelihood) on the out-of-fold logits of
   that cross-validation, then the final model is fitted on all training rows.
4. The task resolver is a conditional logit over (turn, task) pair features of the update/cancel rows
   (one softmax over each ledger's tasks), its L2 penalty chosen and its temperature fitted on
   out-of-fold scores the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize, minimize_scalar
from sklearn.linear_model import LogisticRegression

from intent.contract import ACTIONS
from intent.dataset import Example
from intent.embedded_model import EmbeddedModel, callback_action
from intent.features import (
    DENSE_NAMES,
    FloatArray,
    TfidfVocab,
    context_terms,
    dense_features,
    message_terms,
    pair_features,
)
from intent.splits import stratified_folds

C_GRID = (3.0, 10.0, 30.0, 100.0)
PAIR_L2_GRID = (0.0001, 0.0003, 0.001, 0.003, 0.01)


def _action_matrix(examples: Sequence[Example], msg: TfidfVocab, ctx: TfidfVocab) -> sp.csr_matrix:
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    n_dense = len(DENSE_NAMES)
    for r, ex in enumerate(examples):
        blocks = [
            (msg.transform(message_terms(ex.last_message)), 0),
            (ctx.transform(context_terms(ex.transcript)), len(msg)),
        ]
        for (idx, val), offset in blocks:
            rows += [r] * len(idx)
            cols += (idx + offset).tolist()
            vals += val.tolist()
        dense = dense_features(ex.transcript, ex.tasks)
        rows += [r] * n_dense
        cols += list(range(len(msg) + len(ctx), len(msg) + len(ctx) + n_dense))
        vals += dense.tolist()
    shape = (len(examples), len(msg) + len(ctx) + n_dense)
    return sp.csr_matrix((vals, (rows, cols)), shape=shape)


def _fit_temperature(logits: FloatArray, labels: np.ndarray[Any, Any], mask: FloatArray | None = None) -> float:
    """Temperature minimising the NLL of softmax(logits / T); ``mask`` holds -inf for impossible classes."""
    z0 = logits if mask is None else logits + mask

    def nll(log_t: float) -> float:
        z = z0 / math.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(labels)), labels].mean())

    res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(math.exp(res.x))


def _new_lr(c: float) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=3000, class_weight="balanced")


def _oof(x: sp.csr_matrix | FloatArray, y: np.ndarray[Any, Any], folds: Sequence[int], c: float, k: int) -> FloatArray:
    """Out-of-fold decision scores (n x classes, or n for binary)."""
    out: FloatArray | None = None
    fold_arr = np.asarray(folds)
    for f in range(k):
        tr, te = fold_arr != f, fold_arr == f
        model = _new_lr(c).fit(x[tr], y[tr])
        scores = np.asarray(model.decision_function(x[te]), dtype=np.float64)
        if out is None:
            out = np.zeros((len(y), *scores.shape[1:]), dtype=np.float64)
        out[te] = scores
    assert out is not None
    return out


def train(
    examples: Sequence[Example],
    *,
    folds: int = 5,
    seed: int = 13,
    c_grid: Sequence[float] = C_GRID,
    pair_l2_grid: Sequence[float] = PAIR_L2_GRID,
    log: Callable[[str], None] = lambda _: None,
) -> EmbeddedModel:
    """Fit vocabularies, the action classifier, its calibration and the task resolver on ``examples``."""
    if len(examples) < 10 * folds:
        raise ValueError(f"need at least {10 * folds} training rows, got {len(examples)}")
    msg = TfidfVocab.fit([message_terms(ex.last_message) for ex in examples], min_df=2)
    ctx = TfidfVocab.fit([context_terms(ex.transcript) for ex in examples], min_df=2)
    x = _action_matrix(examples, msg, ctx)
    y = np.array([ACTIONS.index(ex.expected.action) for ex in examples])
    fold_of = stratified_folds([ex.action for ex in examples], folds, seed)
    no_task_mask = np.array([[0.0 if (ex.tasks or not a.needs_task) else -np.inf for a in ACTIONS] for ex in examples])

    best: tuple[float, float, FloatArray] | None = None
    for c in c_grid:
        z = _oof(x, y, fold_of, c, folds)
        t = _fit_temperature(z, y, no_task_mask)
        zt = (z + no_task_mask) / t
        zt -= zt.max(axis=1, keepdims=True)
        logp = zt - np.log(np.exp(zt).sum(axis=1, keepdims=True))
        loss = float(-logp[np.arange(len(y)), y].mean())
        acc = float((z.argmax(axis=1) == y).mean())
        log(f"action C={c:g}: cv log-loss {loss:.4f} (T={t:.3f}), cv accuracy {acc:.3f}")
        if best is None or loss < best[0]:
            best = (loss, c, z)
    assert best is not None
    _, c_best, z_best = best
    temperature = _fit_temperature(z_best, y, no_task_mask)
    final = _new_lr(c_best).fit(x, y)
    order = [list(final.classes_).index(i) for i in range(len(ACTIONS))]
    coef = np.asarray(final.coef_, dtype=np.float64)[order].T.copy()
    intercept = np.asarray(final.intercept_, dtype=np.float64)[order].copy()

    callbacks = [ex for ex in examples if callback_action(ex.last_message) is not None]
    agree = sum(callback_action(ex.last_message) == ex.expected.action for ex in callbacks)
    callback_confidence = (agree + 1) / (len(callbacks) + 2)  # Laplace: never a flat 1.0
    log(f"callback policy: {agree}/{len(callbacks)} training callbacks agree (confidence {callback_confidence:.3f})")
    pair_coef, pair_intercept, pair_t, pair_info = _train_resolver(examples, folds, seed, pair_l2_grid, log)
    info: dict[str, Any] = {
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": len(examples),
        "actions": {a.value: int((y == i).sum()) for i, a in enumerate(ACTIONS)},
        "C": c_best,
        "temperature": round(temperature, 4),
        "cv_folds": folds,
        "callback_policy_rows": len(callbacks),
        "callback_policy_agree": agree,
        "callback_policy_confidence": round(callback_confidence, 4),
        "cv_action_log_loss": round(best[0], 4),
        "cv_action_accuracy": round(float((z_best.argmax(axis=1) == y).mean()), 4),
        "train_ids": sorted(ex.id for ex in examples),
        "msg_terms": len(msg),
        "ctx_terms": len(ctx),
        **pair_info,
    }
    log(f"chosen C={c_best:g}, temperature {temperature:.3f}")
    return EmbeddedModel(
        msg_vocab=msg,
        ctx_vocab=ctx,
        coef=coef,
        intercept=intercept,
        temperature=temperature,
        pair_coef=pair_coef,
        pair_intercept=pair_intercept,
        pair_temperature=pair_t,
        info=info,
    )


def _fit_conditional_logit(groups: Sequence[tuple[FloatArray, int]], lam: float) -> FloatArray:
    """Weights of a conditional logit: softmax over one ledger's tasks, L2-penalised, fitted with L-BFGS."""
    x = np.vstack([g[0] for g in groups])
    sizes = np.array([len(g[0]) for g in groups])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    truth = starts + np.array([g[1] for g in groups])
    owner = np.repeat(np.arange(len(groups)), sizes)
    n = len(groups)

    def objective(w: FloatArray) -> tuple[float, FloatArray]:
        s = x @ w
        s = s - np.maximum.reduceat(s, starts)[owner]
        e = np.exp(s)
        denom = np.add.reduceat(e, starts)
        p = e / denom[owner]
        loss = float(-(s[truth] - np.log(denom)).sum())
        grad = -(x[truth].sum(axis=0)) + p @ x
        return loss / n + lam * float(w @ w), grad / n + 2 * lam * w

    res = minimize(objective, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B")
    return np.asarray(res.x, dtype=np.float64)


def _group_nll(groups: Sequence[tuple[FloatArray, int]], scores: Sequence[FloatArray], t: float) -> float:
    nll = 0.0
    for (_, y), s in zip(groups, scores, strict=True):
        z = s / t
        z = z - z.max()
        nll -= float(z[y]) - math.log(float(np.exp(z).sum()))
    return nll / len(groups)


def _train_resolver(
    examples: Sequence[Example], folds: int, seed: int, lam_grid: Sequence[float], log: Callable[[str], None]
) -> tuple[FloatArray, float, float, dict[str, Any]]:
    """Conditional logit over (turn, task) pair features, trained on the update/cancel rows."""
    rows = [ex for ex in examples if ex.expected.action.needs_task and ex.tasks]
    groups = [(pair_features(ex.transcript, ex.tasks), [t.id for t in ex.tasks].index(ex.expected.args()["task_id"]))
              for ex in rows]  # fmt: skip
    fold_of = stratified_folds([str(len(ex.tasks) > 1) for ex in rows], folds, seed)

    best: tuple[tuple[float, float], float, list[FloatArray]] | None = None
    for lam in lam_grid:
        oof: list[FloatArray] = [np.zeros(0)] * len(groups)
        for f in range(folds):
            w = _fit_conditional_logit([g for g, k in zip(groups, fold_of, strict=True) if k != f], lam)
            for i, k in enumerate(fold_of):
                if k == f:
                    oof[i] = groups[i][0] @ w
        loss = _group_nll(groups, oof, 1.0)
        acc = sum(int(np.argmax(s)) == y for (_, y), s in zip(groups, oof, strict=True)) / len(groups)
        log(f"resolver L2={lam:g}: cv group log-loss {loss:.4f}, cv task accuracy {acc:.3f}")
        # accuracy first (the task choice is what matters), log-loss breaks ties; the temperature
        # fitted below recalibrates whichever penalty wins
        key = (-acc, loss)
        if best is None or key < best[0]:
            best = (key, lam, oof)
    assert best is not None
    _, lam_best, oof_best = best
    res = minimize_scalar(lambda lt: _group_nll(groups, oof_best, math.exp(lt)), bounds=(-3.0, 3.0), method="bounded")
    t = float(math.exp(res.x))
    w = _fit_conditional_logit(groups, lam_best)
    cv_acc = sum(int(np.argmax(s)) == y for (_, y), s in zip(groups, oof_best, strict=True)) / len(groups)
    info = {
        "resolver_rows": len(rows),
        "resolver_l2": lam_best,
        "resolver_temperature": round(t, 4),
        "cv_task_accuracy": round(cv_acc, 4),
    }
    return w, 0.0, t, info
