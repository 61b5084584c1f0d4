"""Backbone jet embeddings for the paper's Fig. 6: untrained, pretrained and fine-tuned backbones.

A jet's embedding is the mean of the backbone's outputs over the jet's real tokens. The three
backbones share one architecture: fresh weights (seeded), the pretrained checkpoint, and the
backbone of a fine-tuning run. t-SNE (scikit-learn) maps each set to two dimensions.

What the picture suggests is also put in numbers (:func:`probe_decay_modes`): two probes of the
frozen embeddings, a linear one (a standardised multinomial logistic regression) and a kNN
classifier, are fitted to the decay modes of tau jets of the train split and scored on the test
split's tau jets that the t-SNE shows: accuracy (with its binomial standard error), balanced
accuracy, and the majority class's share as the floor a probe must beat. The probes run for
every backbone of ``pretrain.backbones`` the grid fine-tunes on decay modes
(:func:`embed_jets` embeds the same test jets under each), so the backbones compare on the same
jets; the t-SNE shows the paper's backbone.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from taufm.data import read_shards
from taufm.errors import TaufmError
from taufm.finetune.strategies import DEFAULT_BACKBONE
from taufm.progress import duration
from taufm.tokenizer.tokenize import N_CANDIDATE_CHANNELS, TOKEN_FEATURES_COLUMN, token_feature_array
from taufm.models.gpt import GPTBackbone, GPTConfig
from taufm.pretrain.train import load_backbone
from taufm.train.runtime import load_checkpoint, load_state_strict

log = logging.getLogger(__name__)

STAGES = ("untrained", "pretrained", "fine-tuned")


def _finetuned_backbone(run_model: Path, config: GPTConfig) -> GPTBackbone:
    payload = load_checkpoint(run_model)
    state = {k[len("backbone.") :]: v for k, v in payload["model"].items() if k.startswith("backbone.")}
    if not state:
        raise TaufmError(f"{run_model}: not the model of a backbone fine-tuning run (no backbone weights)")
    backbone = GPTBackbone(config)
    load_state_strict(backbone, state, run_model)
    return backbone


def backbone_inputs(backbone: GPTBackbone, table: Mapping[str, np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What ``backbone`` reads for ``rows`` of a token-shard table: token ids, or the tokenizer
    channels of ``token_features`` for a continuous-input backbone; cut to its max_length."""
    length = backbone.config.max_length
    mask = table["token_mask"][rows][:, :length]
    if backbone.config.inputs == "continuous":
        if TOKEN_FEATURES_COLUMN not in table:
            raise TaufmError(f"a continuous-input backbone reads the token shards' {TOKEN_FEATURES_COLUMN} column")
        return token_feature_array(table[TOKEN_FEATURES_COLUMN][rows])[:, :length, :N_CANDIDATE_CHANNELS], mask
    return table["tokens"][rows][:, :length], mask


def _columns(backbone_sets: Sequence[Mapping[str, GPTBackbone]]) -> list[str]:
    continuous = any(b.config.inputs == "continuous" for backbones in backbone_sets for b in backbones.values())
    return ["tokens", "token_mask", "label", "decay_mode", *([TOKEN_FEATURES_COLUMN] if continuous else [])]


@torch.no_grad()
def jet_embeddings(backbone: GPTBackbone, tokens: np.ndarray, mask: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Mean backbone output over each jet's real positions; ``tokens``: what the backbone reads
    (token ids, or features for a continuous-input backbone)."""
    backbone.eval()
    out = []
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start : start + batch_size]
        t = torch.from_numpy(batch.astype(np.float32 if backbone.config.inputs == "continuous" else np.int64))
        m = torch.from_numpy(mask[start : start + batch_size].astype(bool))
        e = backbone(t, m)
        out.append(((e * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)).numpy())
    return np.concatenate(out) if out else np.zeros((0, backbone.config.dim), dtype=np.float32)


def load_backbones(pretrained: str | Path, finetuned_model: str | Path, seed: int = 0) -> dict[str, GPTBackbone]:
    """The three backbones of :data:`STAGES`: fresh weights drawn with ``seed``, the pretrained
    checkpoint, and the backbone of the fine-tuning run's ``model.pt``."""
    pretrained_backbone = load_backbone(pretrained)
    config = pretrained_backbone.config
    torch.manual_seed(seed)
    return {"untrained": GPTBackbone(config), "pretrained": pretrained_backbone, "fine-tuned": _finetuned_backbone(Path(finetuned_model), config)}


def embed_tau_jets(
    shards: Sequence[str | Path],
    pretrained: str | Path,
    finetuned_model: str | Path,
    max_jets: int = 4096,
    seed: int = 0,
    split: str = "test",
    backbones: Mapping[str, GPTBackbone] | None = None,
) -> dict[str, np.ndarray]:
    """Embeddings of up to ``max_jets`` tau jets of ``shards`` under the three backbones, with
    their decay modes; plus the 2-D t-SNE of each."""
    from sklearn.manifold import TSNE

    backbones = load_backbones(pretrained, finetuned_model, seed) if backbones is None else backbones
    out = embed_jets(shards, backbones, max_jets, seed, split)
    perplexity = float(min(30.0, max(2.0, (len(out["decay_mode"]) - 1) / 3)))
    for stage in backbones:
        started = time.monotonic()
        log.info("t-SNE of the %s backbone's embeddings of %d tau jets ...", stage, len(out["decay_mode"]))
        out[f"tsne_{stage}"] = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(out[f"embedding_{stage}"]).astype(np.float32)
        log.info("t-SNE of the %s backbone's embeddings: done in %s", stage, duration(time.monotonic() - started))
    return out


def embed_jets(shards: Sequence[str | Path], backbones: Mapping[str, GPTBackbone], max_jets: int = 4096, seed: int = 0, split: str = "test") -> dict[str, np.ndarray]:
    """``decay_mode`` and ``embedding_<stage>`` of up to ``max_jets`` tau jets of ``split``,
    drawn with ``seed`` (the same jets for every set of backbones), under each of ``backbones``."""
    table = read_shards(shards, _columns([backbones]), split=split)
    taus = np.flatnonzero(table["label"] == 1)
    if len(taus) == 0:
        raise TaufmError("no tau jets in the " + split + " split of: " + ", ".join(map(str, shards)))
    taus = np.sort(np.random.default_rng(seed).permutation(taus)[:max_jets])
    out: dict[str, np.ndarray] = {"decay_mode": table["decay_mode"][taus].astype(np.int8)}
    for stage, backbone in backbones.items():
        out[f"embedding_{stage}"] = jet_embeddings(backbone, *backbone_inputs(backbone, table, taus))
    return out


def plot_tsne(result: dict[str, np.ndarray], output_stem: str | Path) -> dict:
    """Fig. 6: three t-SNE panels coloured by true decay mode."""
    from taufm.physics.tau import DECAY_MODE_NAMES
    from taufm.plots.style import DECAY_MODE_COLORS, new_figure, save_figure, taufm_style

    with taufm_style():
        fig, axes = new_figure(1, 3)
        for ax, stage in zip(axes[0], STAGES):
            xy = result[f"tsne_{stage}"]
            for code, name in enumerate(DECAY_MODE_NAMES):
                sel = result["decay_mode"] == code
                if sel.any():
                    ax.scatter(xy[sel, 0], xy[sel, 1], s=4, alpha=0.6, color=DECAY_MODE_COLORS[name], label=name)
            ax.set_title(f"{stage} backbone")
            ax.set_xlabel("t-SNE 1")
            ax.set_ylabel("t-SNE 2")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][0].legend(markerscale=4, fontsize="small", title="true decay mode")
        save_figure(fig, output_stem)
    return {"jets": int(len(result["decay_mode"])), "decay_modes": {n: int((result["decay_mode"] == i).sum()) for i, n in enumerate(DECAY_MODE_NAMES)}}


PROBES = ("logistic_regression", "knn")


def _probe(name: str, neighbours: int, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "logistic_regression":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    return make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=neighbours))


def probe_decay_modes(
    shards: Sequence[str | Path],
    backbones: Mapping[str, GPTBackbone],
    test: dict[str, np.ndarray],
    train_jets: int = 4000,
    neighbours: int = 15,
    seed: int = 0,
    backbone: str = DEFAULT_BACKBONE,
) -> list[dict]:
    """Probe rows (one per backbone stage and probe) of the backbone named ``backbone``: fitted
    on the embeddings, under ``backbones`` (:func:`load_backbones`, the ones ``test`` was
    embedded with), of up to ``train_jets`` tau jets of the train split of ``shards``, scored on
    ``test``, the result of :func:`embed_jets` (its ``embedding_<stage>`` and ``decay_mode``)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    table = read_shards(shards, _columns([backbones]), split="train")
    taus = np.flatnonzero(table["label"] == 1)
    if len(taus) == 0:
        raise TaufmError("no tau jets in the train split of: " + ", ".join(map(str, shards)))
    taus = np.sort(np.random.default_rng(seed).permutation(taus)[:train_jets])
    y_train = table["decay_mode"][taus].astype(np.int64)
    y_test = np.asarray(test["decay_mode"], dtype=np.int64)
    if len(np.unique(y_train)) < 2:
        raise TaufmError(f"the {len(taus)} training tau jets of the probes hold one decay mode only: nothing to classify")
    neighbours = min(neighbours, len(taus))
    majority = float(np.mean(y_test == np.bincount(y_train).argmax()))
    rows = []
    for stage, network in backbones.items():
        x_train = jet_embeddings(network, *backbone_inputs(network, table, taus))
        x_test = test[f"embedding_{stage}"]
        for name in PROBES:
            predicted = _probe(name, neighbours, seed).fit(x_train, y_train).predict(x_test)
            accuracy = float(accuracy_score(y_test, predicted))
            rows.append(
                {
                    "backbone": backbone,
                    "backbone_stage": stage,
                    "probe": name,
                    "accuracy": accuracy,
                    "accuracy_error": math.sqrt(accuracy * (1 - accuracy) / len(y_test)),
                    "balanced_accuracy": float(balanced_accuracy_score(y_test, predicted)),
                    "majority_fraction": majority,
                    "train_jets": int(len(taus)),
                    "test_jets": int(len(y_test)),
                    "neighbours": neighbours if name == "knn" else None,
                }
            )
    return rows


def plot_probes(rows: Sequence[dict], output_stem: str | Path) -> None:
    """Probe accuracy per backbone stage (bars with binomial errors), the majority share dashed."""
    from taufm.plots.style import new_figure, save_figure, taufm_style

    labels = {"logistic_regression": "linear probe", "knn": "kNN"}
    names = list(dict.fromkeys(r.get("backbone", DEFAULT_BACKBONE) for r in rows))
    series = [(b, probe) for b in names for probe in PROBES]
    with taufm_style():
        fig, axes = new_figure(1, 1)
        ax = axes[0][0]
        width = 0.8 / len(series)
        for i, (backbone, name) in enumerate(series):
            chosen = {r["backbone_stage"]: r for r in rows if r["probe"] == name and r.get("backbone", DEFAULT_BACKBONE) == backbone}
            x = np.arange(len(STAGES)) + (i - (len(series) - 1) / 2) * width
            hatch = "//" if name == "knn" else None
            ax.bar(x, [chosen[s]["accuracy"] for s in STAGES], width, yerr=[chosen[s]["accuracy_error"] for s in STAGES], capsize=2, hatch=hatch,
                   color=f"C{names.index(backbone)}", alpha=0.9 if name != "knn" else 0.55, label=f"{backbone}: {labels[name]}")
        ax.axhline(rows[0]["majority_fraction"], color="black", linestyle="--", linewidth=1, label="majority decay mode")
        ax.set_xticks(np.arange(len(STAGES)), [f"{s} backbone" for s in STAGES])
        ax.set(ylabel="Decay-mode accuracy (test tau jets)", ylim=(0, 1), title=f"Probes of frozen jet embeddings ({rows[0]['train_jets']} training jets)")
        ax.legend(loc="upper left")
        save_figure(fig, output_stem)
