"""Multimodal sentiment datasets: a tensor container, the MMSA feature pickle, a synthetic generator.

Container
---------
:class:`MultimodalDataset` holds one split: ``text [N, L_t, D_t]``, ``audio [N, L_a, D_a]``,
``vision [N, L_v, D_v]`` (float32), ``labels [N]`` (float32), optional boolean padding
masks ``[N, L]`` per modality (True = valid token; ``None`` = every token valid) and
optional per-sample ``meta`` tensors.  :meth:`MultimodalDataset.batches` iterates over
:class:`Batch` objects, shuffled with a ``torch.Generator`` when asked;
:func:`standardize` z-scores features with training-split statistics.

MMSA pickle
-----------
:func:`load_mmsa_pickle` reads the feature pickles of the MMSA toolkit (thuiar/MMSA,
e.g. ``MOSI/Processed/unaligned_50.pkl``): a dict with ``train`` / ``valid`` / ``test``,
each holding ``text``, ``audio``, ``vision`` (3-D arrays) and ``regression_labels``
(``[N]`` or ``[N, 1]``); unaligned files also hold ``audio_lengths`` / ``vision_lengths``,
which become padding masks (the first ``length`` tokens are valid).  As MMSA's
``MMDataset`` does, audio values equal to ``-inf`` are set to 0.

Synthetic data
--------------
:func:`make_synthetic` draws a dataset with CMU-MOSI's split sizes (1284 / 229 / 686)
and sequence shapes (text 50 tokens, audio 375 frames x 5, vision 500 frames x 20).
Only the text width differs by default: 128 instead of BERT's 768, which would take
~340 MB of float32 (set ``SyntheticConfig(text_dim=768)`` for the exact shape).
It is built to contain what MS-Mix is about: modalities that disagree about the
sentiment and do so with different intensities, within a small training set.
Every constant below is a :class:`SyntheticConfig` field (default value shown); one
``numpy.random.Generator(PCG64(seed))`` draws everything, in a fixed order, so a seed
fixes the dataset.  Samples ``n`` are generated jointly and split in order
(train, valid, test); ``m`` indexes text, audio, vision.

1. Speakers.  Each split has its own speakers (52 / 10 / 31, MOSI's video counts per
   split, so valid and test speakers are unseen in training); a sample's speaker
   ``c_n`` is uniform over its split's speakers.  A speaker has an identity vector
   ``g_c ~ N(0, I_q)`` (``q = nuisance_dim = 4``) and an expressiveness
   ``gamma_c = exp(N(0, 0.25^2))``.
2. Latent sentiment ``s_n``: a mixture of N(-1.3, 0.8^2) (weight 0.45),
   N(0, 0.25^2) (0.10) and N(1.3, 0.8^2) (0.45), clipped to [-3, 3].
   The label is the annotators' view of it:
   ``y_n = round(3 * clip(s_n + N(0, 0.3^2), -3, 3)) / 3`` (multiples of 1/3).
3. Modality roles.  Independently per sample and modality, a role is drawn with
   probabilities (congruent, neutral, contradicting) = text (0.70, 0.20, 0.10),
   audio (0.50, 0.35, 0.15), vision (0.45, 0.40, 0.15); if no modality of a sample is
   congruent, one modality, chosen with probability proportional to its congruent
   probability, becomes congruent.  The role sets a strength ``a_nm``:
   congruent ``U(0.5, 1.5)``, neutral ``U(-0.1, 0.1)``, contradicting ``U(-1.0, -0.3)``.
   Modality ``m`` expresses the sentiment ``e_nm = gamma_{c_n} * a_nm * s_n``.
4. Lengths.  An utterance-duration fraction ``f_n = clip(exp(N(log 0.35, 0.5^2)), 0.02, 1)``;
   ``len_nm = clip(round(f_n * L_m * exp(N(0, 0.1^2))), 1, L_m)``.  Tokens past
   ``len_nm`` are zero padding and masked out.
5. Temporal envelope ``env_nmt``: text carries the sentiment on every valid token
   (contextual embeddings); audio and vision only on a burst, a window of
   ``max(1, round(len * U(0.3, 0.8)))`` consecutive frames at a uniform offset inside
   the valid part (1 inside, 0 outside).
6. Token latents in ``R^{k_m}`` (``latent_dims = (16, 5, 10)``):
   ``r_nmt = e_nm * env_nmt * u_m + G_m h_n + xi_nmt`` where ``u_m`` is a fixed random
   unit vector (the modality's sentiment axis), ``G_m`` a fixed ``[k_m, q]`` matrix with
   N(0, 1/q) entries and ``h_n = g_{c_n} + 0.5 * N(0, I_q)`` the speaker-and-recording
   nuisance, constant over time and shared by all modalities (so it also drives
   cross-modal feature similarity).  ``xi`` is N(0, I) noise: i.i.d. over text tokens;
   a stationary AR(1) with coefficient ``rho = 0.9`` over audio and vision frames.
7. Features ``x_nmt = r_nmt @ P_m + sigma_m * N(0, I_{D_m})`` with a fixed ``[k_m, D_m]``
   mixing matrix ``P_m`` of N(0, 1/k_m) entries (text is thus a low-rank projection plus
   noise) and ``sigma = (0.5, 0.3, 0.3)``; padding positions are set to 0.

``meta`` records, per sample: ``sentiment`` (``s_n``), ``strength`` (``[N, 3]``,
``gamma * a``), ``role`` (``[N, 3]``: 0 congruent, 1 neutral, 2 contradicting),
``speaker`` (global speaker id) and ``lengths`` (``[N, 3]``).
The constants were fixed when the generator was written and are not tuned to favour
any training or augmentation method.
"""
from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "MODALITIES",
    "SPLITS",
    "Batch",
    "DataError",
    "MultimodalDataset",
    "load_mmsa_pickle",
    "standardize",
    "SyntheticConfig",
    "make_synthetic",
]

MODALITIES = ("text", "audio", "vision")
SPLITS = ("train", "valid", "test")

Masks = Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]


@dataclass(eq=False)
class Batch:
    """One mini-batch; shapes as in :class:`MultimodalDataset` with ``N`` replaced by ``B``.

    ``masks`` is ``(text_mask, audio_mask, vision_mask)``, each ``[B, L]`` bool or ``None``;
    ``index`` ``[B]`` int64 holds the samples' positions in their split.
    """

    text: Tensor
    audio: Tensor
    vision: Tensor
    labels: Tensor
    masks: Masks
    index: Tensor

    def to(self, device: Union[str, torch.device]) -> "Batch":
        """A copy with every tensor on ``device``."""
        return Batch(
            self.text.to(device),
            self.audio.to(device),
            self.vision.to(device),
            self.labels.to(device),
            tuple(None if m is None else m.to(device) for m in self.masks),  # type: ignore[arg-type]
            self.index.to(device),
        )


@dataclass(eq=False)
class MultimodalDataset:
    """One split of a text/audio/vision regression dataset.

    Attributes:
        text: ``[N, L_t, D_t]`` float32.
        audio: ``[N, L_a, D_a]`` float32.
        vision: ``[N, L_v, D_v]`` float32.
        labels: ``[N]`` float32 sentiment scores.
        text_mask, audio_mask, vision_mask: ``[N, L]`` bool, True = valid token;
            ``None`` means every token is valid.
        meta: extra per-sample tensors, first dimension ``N`` (e.g. synthetic latents).
        name: used in error messages (the split name).
    """

    text: Tensor
    audio: Tensor
    vision: Tensor
    labels: Tensor
    text_mask: Optional[Tensor] = None
    audio_mask: Optional[Tensor] = None
    vision_mask: Optional[Tensor] = None
    meta: Dict[str, Tensor] = field(default_factory=dict)
    name: str = "dataset"

    def __post_init__(self) -> None:
        if self.labels.dim() != 1:
            raise ValueError(f"{self.name}: labels must be [N], got shape {tuple(self.labels.shape)}")
        n = self.labels.shape[0]
        for mod in MODALITIES:
            x = getattr(self, mod)
            if x.dim() != 3:
                raise ValueError(f"{self.name}: {mod} must be [N, L, D], got shape {tuple(x.shape)}")
            if x.shape[0] != n:
                raise ValueError(f"{self.name}: {mod} has {x.shape[0]} samples but labels has {n}")
            if not x.is_floating_point():
                raise ValueError(f"{self.name}: {mod} must be floating point, got {x.dtype}")
            mask = getattr(self, f"{mod}_mask")
            if mask is not None:
                if mask.dtype != torch.bool:
                    raise ValueError(f"{self.name}: {mod}_mask must be bool, got {mask.dtype}")
                if tuple(mask.shape) != tuple(x.shape[:2]):
                    raise ValueError(
                        f"{self.name}: {mod}_mask must be {tuple(x.shape[:2])}, got {tuple(mask.shape)}"
                    )
        for key, value in self.meta.items():
            if value.shape[0] != n:
                raise ValueError(f"{self.name}: meta[{key!r}] has {value.shape[0]} rows, expected {n}")

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def masks(self) -> Masks:
        """``(text_mask, audio_mask, vision_mask)``."""
        return (self.text_mask, self.audio_mask, self.vision_mask)

    @property
    def feature_dims(self) -> Tuple[int, int, int]:
        """``(D_t, D_a, D_v)``."""
        return (self.text.shape[2], self.audio.shape[2], self.vision.shape[2])

    @property
    def seq_lens(self) -> Tuple[int, int, int]:
        """``(L_t, L_a, L_v)``."""
        return (self.text.shape[1], self.audio.shape[1], self.vision.shape[1])

    def subset(self, index: Union[Tensor, Sequence[int]]) -> "MultimodalDataset":
        """The samples at ``index`` (1-D int), as a new dataset."""
        idx = torch.as_tensor(index, dtype=torch.long)

        def take(t: Optional[Tensor]) -> Optional[Tensor]:
            return None if t is None else t.index_select(0, idx)

        return MultimodalDataset(
            take(self.text), take(self.audio), take(self.vision), take(self.labels),  # type: ignore[arg-type]
            take(self.text_mask), take(self.audio_mask), take(self.vision_mask),
            {k: v.index_select(0, idx) for k, v in self.meta.items()}, self.name,
        )

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: Optional[torch.Generator] = None,
        drop_last: bool = False,
    ) -> Iterator[Batch]:
        """Iterate over mini-batches.

        Args:
            batch_size: samples per batch (the last one may be smaller unless ``drop_last``).
            shuffle: visit samples in the order of ``torch.randperm(N, generator=generator)``.
            generator: source of the permutation; ``None`` uses torch's global generator.
            drop_last: skip a final batch smaller than ``batch_size``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            yield Batch(
                self.text.index_select(0, idx),
                self.audio.index_select(0, idx),
                self.vision.index_select(0, idx),
                self.labels.index_select(0, idx),
                tuple(None if m is None else m.index_select(0, idx) for m in self.masks),  # type: ignore[arg-type]
                idx,
            )


def standardize(
    splits: Dict[str, MultimodalDataset], reference: str = "train", eps: float = 1e-6
) -> Dict[str, MultimodalDataset]:
    """Z-score every feature dimension with the ``reference`` split's statistics.

    Mean and standard deviation of each modality's dimension are taken over the valid
    tokens of ``splits[reference]`` (so other splits never inform them); every split is
    shifted and scaled by them and padding stays 0.  Real MMSA features (e.g. COVAREP
    audio) span very different scales, and the backbones normalise nothing on input.

    Returns:
        New datasets (labels, masks and meta shared with the inputs).
    """
    if reference not in splits:
        raise ValueError(f"reference split {reference!r} not in {sorted(splits)}")
    ref = splits[reference]
    stats = []
    for mod, mask in zip(MODALITIES, ref.masks):
        x = getattr(ref, mod).double()
        valid = x.reshape(-1, x.shape[-1]) if mask is None else x[mask]
        if valid.shape[0] == 0:
            raise ValueError(f"{reference}: {mod} has no valid tokens to take statistics from")
        stats.append((valid.mean(0).float(), valid.std(0, unbiased=False).float().clamp_min(eps)))
    out = {}
    for name, ds in splits.items():
        scaled = []
        for mod, mask, (mean, std) in zip(MODALITIES, ds.masks, stats):
            x = (getattr(ds, mod) - mean) / std
            scaled.append(x if mask is None else x * mask.unsqueeze(-1))
        out[name] = dataclasses.replace(ds, text=scaled[0], audio=scaled[1], vision=scaled[2])
    return out


# --------------------------------------------------------------------------- MMSA pickle


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and what was expected."""


def _lengths_to_mask(lengths: object, n: int, seq_len: int, where: str) -> Tensor:
    """``[N, L]`` mask whose first ``lengths[i]`` entries of row ``i`` are True.

    A length above ``L`` is clipped (the stored sequence was truncated to ``L``).
    """
    arr = np.asarray(lengths)
    if arr.shape != (n,):
        raise DataError(f"{where}: expected shape ({n},), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{where}: expected integer lengths, got dtype {arr.dtype}")
    as_int = arr.astype(np.int64)
    if np.any(as_int != arr):
        raise DataError(f"{where}: lengths must be whole numbers")
    if np.any(as_int < 0):
        raise DataError(f"{where}: negative length {int(as_int.min())}")
    lens = torch.from_numpy(np.minimum(as_int, seq_len))
    return torch.arange(seq_len).unsqueeze(0) < lens.unsqueeze(1)


def _float_array(split: Dict[str, object], key: str, where: str) -> np.ndarray:
    try:
        arr = np.asarray(split[key])
    except (ValueError, TypeError) as e:  # ragged nested lists, for example
        raise DataError(f"{where}: expected a numeric [N, L, D] array ({e})") from None
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{where}: expected a numeric array, got dtype {arr.dtype}")
    if arr.ndim != 3:
        raise DataError(f"{where}: expected [N, L, D], got shape {arr.shape}")
    return arr.astype(np.float32)


def load_mmsa_pickle(path: Union[str, Path], nonfinite_to_zero: bool = False) -> Dict[str, MultimodalDataset]:
    """Load an MMSA feature pickle into ``{"train", "valid", "test"}`` datasets.

    Each split must hold ``text``, ``audio``, ``vision`` (3-D numeric arrays, same ``N``)
    and ``regression_labels`` (``[N]`` or ``[N, 1]``).  ``audio_lengths`` /
    ``vision_lengths`` (``[N]``, unaligned data) become ``audio_mask`` / ``vision_mask``;
    without them the masks are ``None``.  When ``text_bert`` (``[N, 3, L_t]``: token ids,
    attention mask, segment ids) is present with the text's ``N`` and ``L_t``, its
    attention-mask row becomes ``text_mask``.  Audio ``-inf`` values become 0, as in MMSA.

    Only load files you trust: this unpickles arbitrary objects.

    Args:
        path: the pickle file.
        nonfinite_to_zero: set any other NaN / infinite feature value to 0 instead of
            raising.

    Raises:
        ValueError: a split or key is missing or has the wrong shape, or a feature holds
            NaN / infinite values (unless ``nonfinite_to_zero``); the message names the
            split and key.
    """
    data = _unpickle(Path(path))
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a dict of splits, got {type(data).__name__}")
    out: Dict[str, MultimodalDataset] = {}
    for split in SPLITS:
        if split not in data:
            raise DataError(f"{path}: missing split {split!r} (found {sorted(map(str, data))})")
        s = data[split]
        if not isinstance(s, dict):
            raise DataError(f"{path}: split {split!r} is a {type(s).__name__}, expected a dict")
        for key in (*MODALITIES, "regression_labels"):
            if key not in s:
                raise DataError(f"{path}: split {split!r} has no key {key!r}")
        try:
            out[split] = _split_dataset(s, split, f"{path}: {split}", nonfinite_to_zero)
        except DataError:
            raise
        except (ValueError, TypeError) as e:  # numpy or the dataset rejecting a value
            raise DataError(f"{path}: {split}: {e}") from None
    return out


def _split_dataset(s: Dict[str, object], split: str, where: str, nonfinite_to_zero: bool) -> MultimodalDataset:
    """One split of an MMSA pickle (its keys already checked) as a dataset."""
    feats = {m: _float_array(s, m, f"{where}/{m}") for m in MODALITIES}
    labels = np.asarray(s["regression_labels"], dtype=np.float32)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{where}/regression_labels: expected [N] or [N, 1], got {labels.shape}")
    n = labels.shape[0]
    for m, x in feats.items():
        if x.shape[0] != n:
            raise DataError(f"{where}/{m} has {x.shape[0]} samples, regression_labels has {n}")
    feats["audio"][feats["audio"] == -np.inf] = 0
    for m, x in feats.items():
        bad = ~np.isfinite(x)
        if bad.any():
            if not nonfinite_to_zero:
                raise DataError(f"{where}/{m} holds {int(bad.sum())} NaN/infinite values "
                                "(pass nonfinite_to_zero=True to zero them)")
            x[bad] = 0
    masks: Dict[str, Optional[Tensor]] = {m: None for m in MODALITIES}
    for m in ("audio", "vision"):
        if f"{m}_lengths" in s:
            masks[m] = _lengths_to_mask(s[f"{m}_lengths"], n, feats[m].shape[1], f"{where}/{m}_lengths")
    if "text_bert" in s:
        tb = np.asarray(s["text_bert"])
        if tb.shape == (n, 3, feats["text"].shape[1]):
            masks["text"] = torch.from_numpy(tb[:, 1, :] > 0)
    return MultimodalDataset(
        torch.from_numpy(feats["text"]),
        torch.from_numpy(feats["audio"]),
        torch.from_numpy(feats["vision"]),
        torch.from_numpy(labels),
        masks["text"],
        masks["audio"],
        masks["vision"],
        name=split,
    )


_EXPECTED = "expected an MMSA feature pickle (a dict of train/valid/test splits)"


def _unpickle(path: Path) -> object:
    """The object in ``path``, or a :class:`DataError` that says in one line why not."""
    if not path.exists():
        raise DataError(f"{path}: no such file; {_EXPECTED}")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; {_EXPECTED}")
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except EOFError:
        raise DataError(f"{path}: the file is empty or truncated; {_EXPECTED}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e}); {_EXPECTED}") from None
    except Exception as e:  # unpickling other bytes can raise almost any exception
        raise DataError(f"{path}: not a readable pickle ({type(e).__name__}: {e}); {_EXPECTED}") from None


# --------------------------------------------------------------------------- synthetic data


@dataclass(frozen=True)
class SyntheticConfig:
    """Every constant of :func:`make_synthetic`; the module docstring explains each."""

    split_sizes: Tuple[int, int, int] = (1284, 229, 686)
    speakers_per_split: Tuple[int, int, int] = (52, 10, 31)
    seq_lens: Tuple[int, int, int] = (50, 375, 500)
    text_dim: int = 128
    audio_dim: int = 5
    vision_dim: int = 20
    latent_dims: Tuple[int, int, int] = (16, 5, 10)
    nuisance_dim: int = 4
    expressiveness_sd: float = 0.25
    sentiment_mixture: Tuple[Tuple[float, float, float], ...] = (
        (0.45, -1.3, 0.8),  # (weight, mean, sd)
        (0.10, 0.0, 0.25),
        (0.45, 1.3, 0.8),
    )
    label_noise_sd: float = 0.3
    role_probs: Tuple[Tuple[float, float, float], ...] = (
        (0.70, 0.20, 0.10),  # text: congruent, neutral, contradicting
        (0.50, 0.35, 0.15),  # audio
        (0.45, 0.40, 0.15),  # vision
    )
    congruent_range: Tuple[float, float] = (0.5, 1.5)
    neutral_range: Tuple[float, float] = (-0.1, 0.1)
    contradicting_range: Tuple[float, float] = (-1.0, -0.3)
    duration_median: float = 0.35
    duration_log_sd: float = 0.5
    length_jitter_sd: float = 0.1
    burst_fraction: Tuple[float, float] = (0.3, 0.8)
    recording_noise_sd: float = 0.5
    ar_coefficient: float = 0.9
    feature_noise_sd: Tuple[float, float, float] = (0.5, 0.3, 0.3)

    @property
    def feature_dims(self) -> Tuple[int, int, int]:
        return (self.text_dim, self.audio_dim, self.vision_dim)

    def validate(self) -> None:
        """Raise ``ValueError`` for values the generator cannot use."""
        if any(n < 1 for n in self.split_sizes):
            raise ValueError(f"split_sizes must be positive, got {self.split_sizes}")
        if any(n < 1 for n in self.speakers_per_split):
            raise ValueError(f"speakers_per_split must be positive, got {self.speakers_per_split}")
        for name in ("seq_lens", "feature_dims", "latent_dims"):
            if any(v < 1 for v in getattr(self, name)):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.nuisance_dim < 1:
            raise ValueError(f"nuisance_dim must be positive, got {self.nuisance_dim}")
        if len(self.role_probs) != 3 or any(abs(sum(p) - 1.0) > 1e-6 or min(p) < 0 for p in self.role_probs):
            raise ValueError("role_probs must be three rows of 3 non-negative probabilities summing to 1")
        if all(p[0] == 0 for p in self.role_probs):
            raise ValueError("at least one modality needs a non-zero congruent probability")
        weights = [w for w, _, _ in self.sentiment_mixture]
        if abs(sum(weights) - 1.0) > 1e-6 or min(weights) < 0:
            raise ValueError("sentiment_mixture weights must be non-negative and sum to 1")
        if not 0.0 <= self.ar_coefficient < 1.0:
            raise ValueError(f"ar_coefficient must be in [0, 1), got {self.ar_coefficient}")
        lo, hi = self.burst_fraction
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"burst_fraction must satisfy 0 < lo <= hi <= 1, got {self.burst_fraction}")


def _unit(rng: np.random.Generator, k: int) -> np.ndarray:
    v = rng.standard_normal(k)
    return v / np.linalg.norm(v)


def _draw_roles(rng: np.random.Generator, cfg: SyntheticConfig, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Roles ``[n, 3]`` (0 congruent, 1 neutral, 2 contradicting) and strengths ``a [n, 3]``."""
    probs = np.asarray(cfg.role_probs)
    roles = np.stack([rng.choice(3, size=n, p=probs[m]) for m in range(3)], axis=1)
    # Every sample's label is visible in at least one modality.
    none_congruent = np.flatnonzero((roles != 0).all(axis=1))
    congruent_p = probs[:, 0] / probs[:, 0].sum()
    roles[none_congruent, rng.choice(3, size=none_congruent.size, p=congruent_p)] = 0
    ranges = np.asarray([cfg.congruent_range, cfg.neutral_range, cfg.contradicting_range])
    u = rng.random((n, 3))
    strength = ranges[roles, 0] + u * (ranges[roles, 1] - ranges[roles, 0])
    return roles, strength


def _ar1_noise(rng: np.random.Generator, n: int, length: int, k: int, rho: float) -> np.ndarray:
    """Stationary AR(1) noise ``[n, length, k]`` with unit variance, float32."""
    eps = rng.standard_normal((n, length, k), dtype=np.float32)
    if rho == 0.0:
        return eps
    innov = np.float32(np.sqrt(1.0 - rho * rho))
    rho32 = np.float32(rho)
    for t in range(1, length):
        eps[:, t] = rho32 * eps[:, t - 1] + innov * eps[:, t]
    return eps


def make_synthetic(seed: int = 0, config: Optional[SyntheticConfig] = None) -> Dict[str, MultimodalDataset]:
    """Draw the synthetic MOSI-like dataset described in the module docstring.

    Args:
        seed: seeds ``numpy.random.Generator(PCG64(seed))``; same seed, same data.
        config: generator constants; ``None`` uses :class:`SyntheticConfig` defaults.

    Returns:
        ``{"train", "valid", "test"}`` :class:`MultimodalDataset` splits; every modality
        has a padding mask, and ``meta`` holds ``sentiment [N]``, ``strength [N, 3]``,
        ``role [N, 3]``, ``speaker [N]``, ``lengths [N, 3]``.
    """
    cfg = config if config is not None else SyntheticConfig()
    cfg.validate()
    rng = np.random.Generator(np.random.PCG64(seed))
    n_total = sum(cfg.split_sizes)
    q = cfg.nuisance_dim

    # Fixed per-modality structure.
    axes = [_unit(rng, k) for k in cfg.latent_dims]
    nuisance_maps = [rng.normal(0.0, 1.0 / np.sqrt(q), (k, q)) for k in cfg.latent_dims]
    mixers = [rng.normal(0.0, 1.0 / np.sqrt(k), (k, d)) for k, d in zip(cfg.latent_dims, cfg.feature_dims)]

    # Speakers, disjoint between splits.
    n_speakers = sum(cfg.speakers_per_split)
    speaker_id = rng.standard_normal((n_speakers, q))
    speaker_gamma = np.exp(rng.normal(0.0, cfg.expressiveness_sd, n_speakers))
    first = np.cumsum((0,) + cfg.speakers_per_split[:-1])
    speaker = np.concatenate([
        first[i] + rng.integers(0, cfg.speakers_per_split[i], size)
        for i, size in enumerate(cfg.split_sizes)
    ])

    # Latent sentiment and labels.
    w, mu, sd = (np.asarray(c) for c in zip(*cfg.sentiment_mixture))
    comp = rng.choice(len(w), size=n_total, p=w)
    sentiment = np.clip(rng.normal(mu[comp], sd[comp]), -3.0, 3.0)
    noisy = np.clip(sentiment + rng.normal(0.0, cfg.label_noise_sd, n_total), -3.0, 3.0)
    labels = np.round(3.0 * noisy) / 3.0 + 0.0  # + 0.0 turns -0.0 into 0.0

    roles, a = _draw_roles(rng, cfg, n_total)
    strength = speaker_gamma[speaker, None] * a
    expressed = strength * sentiment[:, None]  # e_nm
    nuisance = speaker_id[speaker] + cfg.recording_noise_sd * rng.standard_normal((n_total, q))

    frac = np.clip(np.exp(rng.normal(np.log(cfg.duration_median), cfg.duration_log_sd, n_total)), 0.02, 1.0)
    lengths = np.empty((n_total, 3), dtype=np.int64)
    for m, seq_len in enumerate(cfg.seq_lens):
        jitter = np.exp(rng.normal(0.0, cfg.length_jitter_sd, n_total))
        lengths[:, m] = np.clip(np.round(frac * seq_len * jitter), 1, seq_len)

    feats: List[Tensor] = []
    masks: List[Tensor] = []
    for m, (seq_len, k, d) in enumerate(zip(cfg.seq_lens, cfg.latent_dims, cfg.feature_dims)):
        t = np.arange(seq_len)
        valid = t[None, :] < lengths[:, m, None]  # [N, L]
        if m == 0:
            env = valid
            xi = rng.standard_normal((n_total, seq_len, k), dtype=np.float32)
        else:
            width = np.maximum(1, np.round(lengths[:, m] * rng.uniform(*cfg.burst_fraction, n_total)))
            start = np.floor(rng.random(n_total) * (lengths[:, m] - width + 1))
            env = (t[None, :] >= start[:, None]) & (t[None, :] < (start + width)[:, None])
            xi = _ar1_noise(rng, n_total, seq_len, k, cfg.ar_coefficient)
        static = (nuisance @ nuisance_maps[m].T).astype(np.float32)  # [N, k]
        latent = xi
        latent += static[:, None, :]
        signal = (expressed[:, m, None] * env).astype(np.float32)  # [N, L]
        latent += signal[:, :, None] * axes[m].astype(np.float32)
        x = latent @ mixers[m].astype(np.float32)  # [N, L, D]
        x += np.float32(cfg.feature_noise_sd[m]) * rng.standard_normal((n_total, seq_len, d), dtype=np.float32)
        x *= valid[:, :, None]
        feats.append(torch.from_numpy(x))
        masks.append(torch.from_numpy(valid))

    meta_all = {
        "sentiment": torch.from_numpy(sentiment.astype(np.float32)),
        "strength": torch.from_numpy(strength.astype(np.float32)),
        "role": torch.from_numpy(roles.astype(np.int64)),
        "speaker": torch.from_numpy(speaker.astype(np.int64)),
        "lengths": torch.from_numpy(lengths),
    }
    labels_t = torch.from_numpy(labels.astype(np.float32))
    out: Dict[str, MultimodalDataset] = {}
    begin = 0
    for split, size in zip(SPLITS, cfg.split_sizes):
        sl = slice(begin, begin + size)
        begin += size
        out[split] = MultimodalDataset(
            feats[0][sl].clone(), feats[1][sl].clone(), feats[2][sl].clone(), labels_t[sl].clone(),
            masks[0][sl].clone(), masks[1][sl].clone(), masks[2][sl].clone(),
            {key: v[sl].clone() for key, v in meta_all.items()},
            name=split,
        )
    return out
