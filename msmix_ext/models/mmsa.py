"""MMSA's TFN, LMF and MulT as two-stage backbones (``pip install msmix_ext[mmsa]``).

The models are MMSA 2.2.1's own classes (``MMSA.models.singleTask``), built from MMSA's
``config_regression.json`` (:func:`MMSA.config.get_config_regression`, MOSI's entry, or
the one named by ``dataset``) with ``feature_dims`` set to the data's widths and
``train_mode = "regression"``.  Nothing of MMSA is copied: the feature stage calls MMSA's
encoder submodules, the head calls MMSA's own ``forward`` on a *fusion view* of the same
model, a shallow copy sharing every parameter whose encoders are identities, so MS-Mix
mixes where the paper places it: after the unimodal encoders, before fusion.

Placement per backbone:

- ``tfn``, ``lmf``: after ``text_subnet`` (LSTM + Linear on the text sequence) and
  ``audio_subnet`` / ``video_subnet`` (BatchNorm, dropout, three Linear layers on the
  time-averaged audio / vision), before the tensor product (TFN) or the low-rank factors
  (LMF).  Features ``[B, text_out]``, ``[B, audio_hidden]``, ``[B, video_hidden]``.
- ``mult``: after the text dropout and the temporal ``Conv1d`` projections ``proj_l`` /
  ``proj_a`` / ``proj_v`` (kernel 5, no padding), before the cross-modal transformers.
  Features are token tensors ``[B, T_m - 4, d]``.

Differences from running MMSA's trainer, all deliberate:

- Padding.  MMSA's models read padded steps (TFN/LMF's LSTM and MulT have no lengths),
  and its pickles pad with zeros; the features here are z-scored, so padded steps are set
  back to zero before the encoders.  MMSA time-averages audio / vision over every frame,
  padding included; here the mean is over the valid frames only.
- MulT is affordable on a CPU only when reduced (default ``reduced=True``): audio and
  vision (and text) are average-pooled over time to at most ``max_steps`` = 32 steps
  before the projections, and ``nlevels`` 4 -> 2.  ``reduced=False`` is MMSA's MulT as
  configured (measured: ~50 s per batch of 16 on unaligned MOSI shapes on 2 loaded cores).
- Manifold Mixup has no hidden layer to hook in MMSA's one-piece ``forward``
  (``hidden_layers = 0``): for these backbones it mixes the fusion input, as ``mixup``.
- ``torch.compile`` (``--compile``): dynamo cannot trace the LSTM of TFN/LMF's text subnet
  nor MulT's attention (a data-pointer comparison), so only TFN's and LMF's head is
  compiled and MulT stays eager (``compilable_stages``).
- BatchNorm in TFN/LMF's subnets needs two samples per training batch; the training loop
  skips batches of one (for every backbone), and :meth:`MMSABackbone.features` says so
  if called with one.
- TFN squashes its regression output to ``(-3, 3)`` (MMSA's code, for every dataset).
- MMSA's trainers are not used: the training command's loop and optimiser (Adam over all
  parameters) train every backbone alike.

MMSA is imported by :func:`build` (slow: ~20 s; it also sets ``CUBLAS_WORKSPACE_CONFIG``
and ``CUDA_DEVICE_ORDER`` in the environment, MMSA's own side effect).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import MultimodalRegressor, check_masks, masked_mean

__all__ = ["MMSABackbone", "MulTBackbone", "SubnetFusionBackbone", "build", "mmsa_config"]

_MULT_REDUCED = {"nlevels": 2}
MULT_MAX_STEPS = 32
"""Time steps per modality that the reduced MulT keeps (average pooling over time)."""


def _import_mmsa():
    try:
        import MMSA.config
        import MMSA.models.singleTask
    except ImportError as e:
        raise ImportError(f"the MMSA backbones need MMSA 2.2.1: pip install 'msmix_ext[mmsa]' ({e})") from None
    return MMSA


def mmsa_config(name: str, input_dims: Sequence[int], dataset: str = "mosi",
                overrides: Optional[Dict[str, Any]] = None):
    """MMSA's regression config of model ``name`` on ``dataset`` adapted to ``input_dims``
    ``(D_text, D_audio, D_vision)``: ``feature_dims``, ``train_mode = "regression"``, and
    ``use_bert = False`` (text features used as given; no download)."""
    mmsa = _import_mmsa()
    args = mmsa.config.get_config_regression(name, dataset)
    args.feature_dims = [int(d) for d in input_dims]
    args.train_mode = "regression"
    args.use_bert = False
    for key, value in (overrides or {}).items():
        if key not in args:
            raise ValueError(f"MMSA's {name} config has no key {key!r}; keys: {', '.join(sorted(args))}")
        args[key] = value
    return args


def _zero_padding(x: Tensor, mask: Optional[Tensor]) -> Tensor:
    return x if mask is None else torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))


class MMSABackbone(MultimodalRegressor):
    """An MMSA model split into ``features`` (its encoders) and ``head`` (its ``forward`` on
    the fusion view).  ``self.mmsa`` is MMSA's module; its state dict keys are MMSA's, under
    ``mmsa.``.  ``hidden_layers = 0``: the head is one piece."""

    hidden_layers = 0
    compilable_stages: tuple = ()

    def __init__(self, model: nn.Module, encoders: Sequence[str]) -> None:
        super().__init__()
        self.mmsa = model
        fusion = copy.copy(model)  # shares every parameter; its own module table
        fusion._modules = dict(model._modules)
        for name in encoders:
            fusion._modules[name] = nn.Identity()
        # Not registered as a submodule: parameters and state dict stay MMSA's, once.
        object.__setattr__(self, "_fusion", fusion)

    @property
    def fusion(self) -> nn.Module:
        """The fusion view: MMSA's ``forward`` with the encoders replaced by identities."""
        self._fusion.training = self.training  # its own flag is a copy; MMSA reads it (F.dropout)
        return self._fusion

    def _readout(self, hidden: List[Tensor]) -> Tensor:
        return self.fusion(*hidden)["M"].reshape(-1)


class SubnetFusionBackbone(MMSABackbone):
    """TFN or LMF: the subnets are the feature stage, the fusion and post-fusion layers the head."""

    compilable_stages = ("head",)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, ("text_subnet", "audio_subnet", "video_subnet"))
        self.feature_dims = (model.text_subnet.linear_1.out_features, model.audio_subnet.linear_3.out_features,
                             model.video_subnet.linear_3.out_features)

    def features(self, text: Tensor, audio: Tensor, vision: Tensor,
                 masks: Optional[Sequence[Optional[Tensor]]] = None) -> List[Tensor]:
        """``[B, text_out]``, ``[B, audio_hidden]``, ``[B, video_hidden]`` (see the module docstring)."""
        mt, ma, mv = check_masks(masks, [text, audio, vision])
        if self.training and text.shape[0] < 2:
            raise ValueError("MMSA's SubNet normalises with BatchNorm1d: a training batch needs >= 2 samples, got 1")
        m = self.mmsa
        return [m.text_subnet(_zero_padding(text, mt)), m.audio_subnet(masked_mean(audio, ma)),
                m.video_subnet(masked_mean(vision, mv))]


class MulTBackbone(MMSABackbone):
    """MulT: text dropout and the Conv1d projections are the feature stage; the cross-modal
    and self-attention transformers and the output layers the head."""

    def __init__(self, model: nn.Module, max_steps: Optional[int]) -> None:
        super().__init__(model, ())
        fusion = self._fusion
        # With orig_d == d MMSA's forward skips the projections (MULT.py), and the text
        # dropout was applied in the feature stage.
        fusion.orig_d_l, fusion.orig_d_a, fusion.orig_d_v = model.d_l, model.d_a, model.d_v
        fusion.text_dropout = 0.0
        self.max_steps = max_steps
        self.feature_dims = (model.d_l, model.d_a, model.d_v)

    def _pool(self, x: Tensor) -> Tensor:
        if self.max_steps is None or x.shape[1] <= self.max_steps:
            return x
        return F.adaptive_avg_pool1d(x.transpose(1, 2), self.max_steps).transpose(1, 2)

    def features(self, text: Tensor, audio: Tensor, vision: Tensor,
                 masks: Optional[Sequence[Optional[Tensor]]] = None) -> List[Tensor]:
        """Token tensors ``[B, T_m - 4, d]`` (``T_m`` after the optional pooling)."""
        mt, ma, mv = check_masks(masks, [text, audio, vision])
        m = self.mmsa
        x_t, x_a, x_v = (self._pool(_zero_padding(x, mk)) for x, mk in ((text, mt), (audio, ma), (vision, mv)))
        x_t = F.dropout(x_t, p=m.text_dropout, training=self.training)
        return [proj(x.transpose(1, 2)).transpose(1, 2)
                for proj, x in ((m.proj_l, x_t), (m.proj_a, x_a), (m.proj_v, x_v))]


def build(name: str, input_dims: Sequence[int], dataset: str = "mosi", reduced: bool = True,
          config: Optional[Dict[str, Any]] = None) -> MMSABackbone:
    """MMSA's ``name`` (``tfn``, ``lmf``, ``mult``) for inputs ``(D_t, D_a, D_v)``.

    Args:
        dataset: the ``config_regression.json`` entry (``mosi``, ``mosei``, ``sims``).
        reduced: MulT only: pool time to :data:`MULT_MAX_STEPS` steps and use 2 levels
            (see the module docstring); ignored by TFN and LMF.
        config: overrides of MMSA config keys (e.g. ``{"nlevels": 4}``), applied last.
    """
    mmsa = _import_mmsa()
    classes = {"tfn": mmsa.models.singleTask.TFN, "lmf": mmsa.models.singleTask.LMF,
               "mult": mmsa.models.singleTask.MULT}
    if name not in classes:
        raise ValueError(f"unknown MMSA backbone {name!r}; choose from {', '.join(classes)}")
    if name == "mult":
        overrides = {**(_MULT_REDUCED if reduced else {}), **(config or {})}
        return MulTBackbone(classes[name](mmsa_config(name, input_dims, dataset, overrides)),
                            MULT_MAX_STEPS if reduced else None)
    return SubnetFusionBackbone(classes[name](mmsa_config(name, input_dims, dataset, config)))
