"""Training-data attribution: how much each training example makes the organism answer a query as it does.

Every method scores a training example z against query examples q (a prompt and the completion to
explain); a higher score means training on z made the query's completion more likely:

- `repsim`: cosine of the final layer's residual at the last token of z and of q (forward passes only;
  the baseline an influence study of LoRA backdoors found hard to beat, arXiv 2409.19998).
- `graddot`, `gradcos`: <grad L(q), grad L(z)> at the final weights, and its cosine.
- `tracin`: sum over kept checkpoints c of lr_c * steps_c * <grad L(q; theta_c), grad L(z; theta_c)>
  (TracIn-CP, Pruthi et al. 2020).
- `kfac`, `ekfac`: influence functions, grad L(q)^T (G + lambda I)^-1 grad L(z), with the Gauss-Newton
  matrix G of each linear layer approximated by Kronecker factors A (x) S of its input and output-gradient
  covariances (K-FAC), and in EK-FAC with the eigenvalues in the factors' eigenbasis re-fitted to per-example
  gradients (George et al. 2018; Grosse et al. 2023, Sec. 2.2). The output gradients of the factors use
  labels sampled from the model (the true Fisher), the damping is 0.1 x each layer's mean eigenvalue
  (kronfluence's heuristic, its `damping_factor=None`; its default is an absolute 1e-8).

Gradients are those of every trainable `nn.Linear` weight (the coverage of kronfluence; embeddings and
norms are not tracked; an output head tied to the embedding counts as the head only). A linear layer's gradient for one example is sum_t g_t a_t^T over its tokens (the
output gradient times the input); hooks capture both, so one backward pass of a batch gives every example's
gradient. The losses are the organism's own training loss: summed cross entropy over the answer tokens.

Why not kronfluence or bergson: both declare a torchvision dependency, and the torchvision that pip
resolves beside this project's pinned CPU torch is a CUDA build that fails to import, after which
`transformers` fails to import too. bench/attribution.py runs kronfluence (installed without its
dependencies) beside this module on the same organism and compares time, memory and rankings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..training.sft import IGNORE, collate

Tokenized = Sequence[tuple[list[int], int]]  # (token ids, prompt length), as training.sft.tokenize_examples
GRADIENT_METHODS = ("graddot", "gradcos", "kfac", "ekfac")  # scored from one pass of gradients at the final weights
METHODS = ("repsim", *GRADIENT_METHODS, "tracin")


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """Every trainable linear layer, by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.weight.requires_grad}


class _Taps:
    """Forward hooks keeping each linear layer's input and output of the last forward pass."""

    def __init__(self, layers: dict[str, nn.Linear]):
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in layers.items()]

    def _hook(self, name: str):
        def hook(_mod, inp, out):
            self.inputs[name], self.outputs[name] = inp[0].detach(), out
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _token_losses(model: nn.Module, batch: dict[str, torch.Tensor], sample: torch.Generator | None) -> torch.Tensor:
    """Summed cross entropy over each row's answer tokens, [rows]; with `sample`, against tokens drawn
    from the model's own distribution (the true Fisher's labels) instead of the example's."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    target = batch["labels"][:, 1:]
    keep = target != IGNORE
    rows = torch.arange(len(target), device=target.device)[:, None].expand_as(target)[keep]
    logits, target = logits[:, :-1][keep].float(), target[keep]  # the answer tokens only, [K, vocab]
    if sample is not None:
        with torch.no_grad():
            probs = torch.softmax(logits.detach(), -1)
            target = torch.multinomial(probs.cpu(), 1, generator=sample).view(-1).to(target.device)
    ce = nn.functional.cross_entropy(logits, target, reduction="none")
    return torch.zeros(len(batch["labels"]), device=ce.device, dtype=ce.dtype).index_add(0, rows, ce)


def capture(model: nn.Module, batch: dict[str, torch.Tensor], layers: dict[str, nn.Linear],
            sample: torch.Generator | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's inputs and output gradients over the batch, {name: ([rows, T, in], [rows, T, out])}: one
    backward pass of the summed loss, to the layers' outputs only (no weight gradient is formed)."""
    taps = _Taps(layers)
    try:
        with torch.enable_grad():
            loss = _token_losses(model, batch, sample).sum()
            names = list(layers)
            grads = torch.autograd.grad(loss, [taps.outputs[n] for n in names])
    finally:
        taps.close()
    return {n: (taps.inputs[n].float(), g.float()) for n, g in zip(names, grads)}


def example_grads(model: nn.Module, batch: dict[str, torch.Tensor], layers: dict[str, nn.Linear],
                  sample: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Per-example weight gradients of every layer, {name: [rows, out, in]}: sum_t g_t a_t^T."""
    return {n: torch.bmm(g.transpose(1, 2), a) for n, (a, g) in capture(model, batch, layers, sample).items()}


def batches(data: Tokenized, pad_id: int, batch_size: int, device) -> "Iterator[tuple[np.ndarray, dict]]":
    """(example indices, collated batch) over `data`, examples grouped by length (less padding); each batch is
    collated and moved to `device` only when it is reached."""
    order = np.argsort([len(ids) for ids, _ in data], kind="stable")
    for i in range(0, len(order), batch_size):
        idx = order[i: i + batch_size]
        yield idx, {k: v.to(device) for k, v in collate([data[j] for j in idx], pad_id).items()}


@dataclass
class Factors:
    """Per layer: eigenvectors of the input (A) and output-gradient (S) covariances, and the eigenvalues
    of the Kronecker product in that basis: K-FAC's products of the factors' eigenvalues, or EK-FAC's re-fit."""

    q_in: dict[str, torch.Tensor]
    q_out: dict[str, torch.Tensor]
    kfac: dict[str, torch.Tensor]
    ekfac: dict[str, torch.Tensor]
    n_examples: int
    n_tokens: int


def fit_factors(model: nn.Module, data: Tokenized, pad_id: int, *, batch_size: int = 128, seed: int = 0,
                on_batch: Callable[[int], None] | None = None) -> Factors:
    """K-FAC and EK-FAC factors of every linear layer on `data`, in two passes (covariances, then the
    eigenvalue correction), each with labels sampled from the model (seeded)."""
    layers, device = linear_layers(model), next(model.parameters()).device
    cov_a = {n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for n, m in layers.items()}
    cov_s = {n: torch.zeros(m.out_features, m.out_features, dtype=torch.float64) for n, m in layers.items()}
    gen, tokens = torch.Generator().manual_seed(seed), 0
    for idx, batch in batches(data, pad_id, batch_size, device):
        real = batch["attention_mask"].bool()
        for n, (a, g) in capture(model, batch, layers, sample=gen).items():
            a, g = a[real], g[real]
            cov_a[n] += (a.T @ a).double().cpu()
            cov_s[n] += (g.T @ g).double().cpu()
        tokens += int(real.sum())
        if on_batch:
            on_batch(len(idx))
    q_in, q_out, kfac = {}, {}, {}
    for n in layers:
        la, qa = torch.linalg.eigh(cov_a[n] / tokens)
        ls, qs = torch.linalg.eigh(cov_s[n] / tokens)
        q_in[n], q_out[n] = qa.float().to(device), qs.float().to(device)
        kfac[n] = torch.outer(ls.clamp_min(0), la.clamp_min(0)).float().to(device)
    ekfac = {n: torch.zeros_like(kfac[n]) for n in layers}
    gen = torch.Generator().manual_seed(seed + 1)
    for idx, batch in batches(data, pad_id, batch_size, device):
        for n, g in example_grads(model, batch, layers, sample=gen).items():
            ekfac[n] += (q_out[n].T @ g @ q_in[n]).square().sum(0)
        if on_batch:
            on_batch(len(idx))
    ekfac = {n: v / len(data) for n, v in ekfac.items()}
    return Factors(q_in, q_out, kfac, ekfac, len(data), tokens)


def precondition(queries: dict[str, torch.Tensor], factors: Factors, which: str, damping: float = 0.1) -> dict[str, torch.Tensor]:
    """(G + lambda I)^-1 q for each layer's query gradients [m, out, in]; lambda = `damping` x the layer's
    mean eigenvalue."""
    out = {}
    for n, q in queries.items():
        eig = (factors.kfac if which == "kfac" else factors.ekfac)[n]
        rot = factors.q_out[n].T @ q @ factors.q_in[n]
        rot = rot / (eig + damping * eig.mean())
        out[n] = factors.q_out[n] @ rot @ factors.q_in[n].T
    return out


def query_grads(model: nn.Module, queries: Tokenized, pad_id: int, batch_size: int = 128) -> dict[str, torch.Tensor]:
    """Each query's gradient (its completion's summed loss), {layer: [m, out, in]} in query order."""
    layers, device = linear_layers(model), next(model.parameters()).device
    got: dict[str, list] = {n: [None] * len(queries) for n in layers}
    for idx, batch in batches(queries, pad_id, batch_size, device):
        grads = example_grads(model, batch, layers)
        for n in layers:
            for row, i in enumerate(idx):
                got[n][i] = grads[n][row]
    return {n: torch.stack(v) for n, v in got.items()}


def score_gradients(model: nn.Module, data: Tokenized, pad_id: int, targets: dict[str, dict[str, torch.Tensor]],
                    *, batch_size: int = 128, on_batch: Callable[[int], None] | None = None
                    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """For each named set of (preconditioned) query gradients {layer: [m, out, in]}, the inner product of every
    training example's gradient with every query's, {name: [n, m]}; and each example's gradient norm, [n].
    Layer by layer, so only one layer's per-example gradients are ever held."""
    layers, device = linear_layers(model), next(model.parameters()).device
    names = list(targets)
    cols = [targets[k][next(iter(layers))].shape[0] for k in names]
    c = sum(cols)
    stacked = {n: torch.cat([targets[k][n] for k in names]) for n in layers}  # [c, out, in]
    # Few query columns: sum_t (g_t Q) . a_t as one large matrix product per layer, and the squared norm of
    # sum_t g_t a_t^T as sum_{t,t'} (g_t . g_t')(a_t . a_t'), never forming the per-example gradients (about
    # twice as fast at one column). Many: form them once, then one product with all the columns.
    few = c <= 2
    right = {n: q.permute(1, 0, 2).reshape(q.shape[1], -1) if few else q.flatten(1).T.contiguous()
             for n, q in stacked.items()}  # few: [out, c * in]; else [out * in, c]
    scores = np.zeros((len(data), c), dtype=np.float64)
    norms = np.zeros(len(data))
    for idx, batch in batches(data, pad_id, batch_size, device):
        rows = len(idx)
        total = torch.zeros(rows, c, device=device)
        square = torch.zeros(rows, device=device)
        for n, (a, g) in capture(model, batch, layers).items():
            if few:
                gq = (g.flatten(0, 1) @ right[n]).view(rows, g.shape[1], c, a.shape[-1])
                total += torch.einsum("btci,bti->bc", gq, a)
                square += (torch.bmm(g, g.transpose(1, 2)) * torch.bmm(a, a.transpose(1, 2))).sum((1, 2))
            else:
                grad = torch.bmm(g.transpose(1, 2), a).flatten(1)
                total += grad @ right[n]
                square += torch.linalg.vector_norm(grad, dim=1).square()
        scores[idx] = total.double().cpu().numpy()
        norms[idx] = square.clamp_min(0).sqrt().double().cpu().numpy()
        if on_batch:
            on_batch(len(idx))
    split = np.cumsum(cols)[:-1]
    return dict(zip(names, np.split(scores, split, axis=1))), norms


def mean_query(grads: dict[str, torch.Tensor], unit: bool = False) -> dict[str, torch.Tensor]:
    """The mean of m queries' gradients, {layer: [1, out, in]}; with `unit`, of each scaled to unit norm over
    all layers (so a product with it, over a training gradient's norm, is the mean cosine)."""
    scale = torch.ones(next(iter(grads.values())).shape[0], device=next(iter(grads.values())).device)
    if unit:
        scale = 1 / torch.cat([g.flatten(1) for g in grads.values()], 1).norm(dim=1).clamp_min(1e-30)
    return {n: (g * scale[:, None, None]).mean(0, keepdim=True) for n, g in grads.items()}


def last_token_states(model: nn.Module, data: Tokenized, pad_id: int, *, batch_size: int = 64,
                      on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """The final layer's residual (after the final norm) at each example's last real token, [n, d], unit length."""
    device = next(model.parameters()).device
    out = np.zeros((len(data), model.config.hidden_size), dtype=np.float32)
    with torch.no_grad():
        for idx, batch in batches(data, pad_id, batch_size, device):
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                           output_hidden_states=True).hidden_states[-1]
            last = batch["attention_mask"].sum(1) - 1
            h = hidden[torch.arange(len(idx), device=device), last].float()
            out[idx] = nn.functional.normalize(h, dim=-1).cpu().numpy()
            if on_batch:
                on_batch(len(idx))
    return out
