"""The two-tower matcher: image features and tag vectors mapped into one 128-d space.

Each tower is LayerNorm -> Linear -> GELU -> Dropout -> Linear -> L2 normalisation, so a score
is a cosine, and the towers can be exported and run separately (images and tags are scored
offline, in different passes). It trains against every other tag in the batch (or every tag of
the collection, model/train.py's --loss) with a learned temperature.

Cross-fitting: `FoldedMatcher` holds K members, member k trained on every fold but k, so an
image's published score comes from the one member that never saw it with its (maybe wrong) tag,
plus one member trained on all folds, kept only to measure what in-sample scoring would show.

A checkpoint carries its config, so export and rank rebuild the model without training flags.
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model import storage

CHECKPOINT_VERSION = 2  # 2: a FoldedMatcher (K cross-fitted members + one full member)
INIT_TEMPERATURE = 0.07  # CLIP's starting temperature
MAX_LOGIT_SCALE = 100.0  # CLIP's clamp: keeps the softmax from collapsing onto one logit


@dataclasses.dataclass(frozen=True)
class MatcherConfig:
    image_dim: int
    text_dim: int
    hidden: int = 512
    out_dim: int = 128
    dropout: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MatcherConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


class Tower(nn.Module):
    """in_dim -> hidden -> out_dim, L2-normalised."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float):
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        # Image features (pooled activations) and word vectors live on very different scales.
        self.norm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.fc2(self.drop(self.act(self.fc1(self.norm(features)))))
        return F.normalize(x, dim=-1)


class Matcher(nn.Module):
    def __init__(self, config: MatcherConfig):
        super().__init__()
        self.config = config
        self.image_tower = Tower(config.image_dim, config.hidden, config.out_dim, config.dropout)
        self.text_tower = Tower(config.text_dim, config.hidden, config.out_dim, config.dropout)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / INIT_TEMPERATURE)))

    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()

    def encode_images(self, features: torch.Tensor) -> torch.Tensor:
        return self.image_tower(features)

    def encode_text(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.text_tower(vectors)

    def forward(self, image_features: torch.Tensor, text_vectors: torch.Tensor) -> torch.Tensor:
        """Scaled cosine logits [n_images, n_texts]."""
        return self.logit_scale() * self.encode_images(image_features) @ self.encode_text(text_vectors).T


class StackedTower(nn.Module):
    """The same tower of every member side by side: [batch, in_dim] -> [batch, members, out_dim].

    One ONNX graph per side, so rank runs one session for all members."""

    def __init__(self, towers: list[Tower]):
        super().__init__()
        self.towers = nn.ModuleList(towers)
        self.in_dim = towers[0].in_dim
        self.out_dim = towers[0].out_dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.stack([tower(features) for tower in self.towers], dim=1)


class FoldedMatcher(nn.Module):
    """K cross-fitted members (member k never trains on fold k) and member K, trained on all folds.

    Members 0..K-1 score the images of their held-out fold, and their mean scores an image no
    member trained on. Member K is never used for the published score: it is the in-sample
    matcher the evaluation compares against.
    """

    def __init__(self, config: MatcherConfig, folds: int):
        super().__init__()
        if folds < 2:
            raise ValueError(f"cross-fitting needs at least 2 folds, got {folds}")
        self.config = config
        self.folds = folds
        self.members = nn.ModuleList(Matcher(config) for _ in range(folds + 1))

    @property
    def full_member(self) -> int:
        return self.folds

    def image_towers(self) -> StackedTower:
        return StackedTower([m.image_tower for m in self.members])

    def text_towers(self) -> StackedTower:
        return StackedTower([m.text_tower for m in self.members])


def contrastive_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Symmetric in-batch loss where images that share a tag are never each other's negatives.

    logits: [n_images, n_tags] over the batch's distinct tags; targets: each image's tag column.
    Image -> text is a cross-entropy over the distinct tags. Text -> image treats every image of
    the tag as a positive: -log(sum over positives of softmax over all images).
    """
    image_to_text = F.cross_entropy(logits, targets)
    by_tag = logits.T  # [n_tags, n_images]
    positives = targets.unsqueeze(0) == torch.arange(by_tag.shape[0], device=logits.device).unsqueeze(1)
    positive_logits = by_tag.masked_fill(~positives, float("-inf"))
    text_to_image = (torch.logsumexp(by_tag, dim=1) - torch.logsumexp(positive_logits, dim=1)).mean()
    return (image_to_text + text_to_image) / 2


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------
def save_checkpoint(path: str, model: FoldedMatcher, **extra: Any) -> None:
    """model weights + config + fold count + whatever the caller adds (training args, inputs)."""
    payload = {
        "version": CHECKPOINT_VERSION,
        "config": model.config.to_dict(),
        "folds": model.folds,
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    storage.write_bytes(path, buf.getvalue())


def load_checkpoint(path: str, device: str | torch.device = "cpu") -> tuple[FoldedMatcher, dict[str, Any]]:
    """The folded matcher in eval mode, and the checkpoint's other entries."""
    # weights_only: a checkpoint is data (tensors, numbers, strings), never code to unpickle
    payload = torch.load(io.BytesIO(storage.read_bytes(path)), map_location=device, weights_only=True)
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: checkpoint version {payload.get('version')} (this imgsearch reads {CHECKPOINT_VERSION}); rerun train"
        )
    model = FoldedMatcher(MatcherConfig.from_dict(payload["config"]), int(payload["folds"]))
    model.load_state_dict(payload["model_state"])
    model.to(device).eval()
    return model, payload
