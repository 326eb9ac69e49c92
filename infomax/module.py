"""DeepInfoMax: a thin LightningModule around an encoder and the DIM objective."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Timer

from infomax.augment import Augment
from infomax.encoders import build_encoder, check_maps
from infomax.errors import SettingError, UserError
from infomax.objective import DIMObjective
from infomax.transforms import Normalize

if TYPE_CHECKING:
    from lightning_fabric.utilities.data import AttributeDict


class NonFiniteLossError(UserError, FloatingPointError):
    """Training produced a NaN or infinite loss; raised instead of silently training a NaN model."""


class DeepInfoMax(pl.LightningModule):
    """Deep INFOMAX (Hjelm et al., ICLR 2019) with a Gaussian code and a prior term.

    Defaults are the reference recipe for CIFAR-10: the ``conv`` encoder, z_dim 256,
    alpha 0.5 (global), beta 1.5 (local), gamma 0.01 (prior), JSD bounds with one negative per
    positive, KL prior, Adam at 1e-3. Batches are (uint8 images (B, C, H, W), labels); labels are
    never used for training.

    Args:
        arch: encoder architecture, ``conv`` or ``resnet18``.
        in_channels, input_size: image channels and side in pixels (linked from the data module).
        z_dim: dimension of the code.
        arch_kwargs: extra keyword arguments of the architecture (e.g. ``{"local_stage": "layer2"}``).
        alpha, beta, gamma: weights of the global MI, local MI and prior terms (>= 0).
        global_estimator, local_estimator: ``jsd``, ``infonce`` or ``dv``.
        negatives: ``one`` (one negative per positive) or ``all`` (all pairs of the batch).
        critic: ``concat`` (MLP / 1x1 convs on the concatenation), ``dot`` (encode and dot product)
            or ``cosine`` (encode, cosine similarity over ``critic_temperature``: SimCLR's critic).
        critic_hidden: width of the critics.
        critic_temperature: temperature of the ``cosine`` critic (unused by the others).
        prior: ``kl`` (closed-form KL to N(0, I)) or ``adversarial`` (prior-matching discriminator).
        lr, weight_decay: Adam's settings.
        lr_schedule: ``constant`` or ``cosine`` (annealed to 0 over the whole run: over the epochs,
            or over ``--trainer.max_time`` when that ends the run first).
        lr_warmup: the fraction of the run (in [0, 1), of steps or of the time budget, as the
            schedule counts) over which the rate rises linearly from 0 to ``lr``; the schedule then
            runs over the rest (cosine: from ``lr`` to 0). 0: none.
        mean, std: per-channel normalisation (linked from the data module; 0.5 when unset).
        nonfinite_check_every: on a GPU, how often (steps) the host checks for a non-finite loss;
            checking every step would force a device sync. On the CPU every step is checked.
        augment: augmentation of training batches, done on the batch's device: ``none`` (the
            reference recipe), ``crop_flip`` or ``simclr`` (crop, flip, colour jitter, greyscale).
        views: 1, or 2 to draw two augmented views of each image and take the MI terms across
            them (the global code of one view against the other view's code and feature map).
        channels_last: keep conv weights and inputs in NHWC, which tensor cores prefer.
        compile: ``torch.compile`` the encoder and the critics (pays off on GPUs for long runs).
        extra_local_maps: AMDIM's several scales: names of further feature maps of the encoder
            (``resnet18``: ``layer1``..``layer4``; ``conv``: ``block1``.., ``global1``..), each paired
            with the code as C(x) is, by a critic of its own; the local term is the mean over
            C(x) and these (e.g. ``["layer4"]``: the 8x8 and the 4x4 maps of ResNet-18 at 32 px).
        delta: weight of AMDIM's local-to-local term across the two views (needs ``views=2``): one
            random position of one view's C(x) against every position of the other's.
        score_penalty: AMDIM's lambda * mean(s^2) on every critic's raw scores (4e-2 there); 0: off.
        score_clip: AMDIM's soft clip c * tanh(s / c) of every score before its bound (20 there); 0: off.
    """

    def __init__(
        self,
        arch: str = "conv",
        in_channels: int = 3,
        input_size: int = 32,
        z_dim: int = 256,
        arch_kwargs: dict | None = None,
        alpha: float = 0.5,
        beta: float = 1.5,
        gamma: float = 0.01,
        global_estimator: str = "jsd",
        local_estimator: str = "jsd",
        negatives: str = "one",
        critic: str = "concat",
        critic_hidden: int = 512,
        critic_temperature: float = 0.1,
        prior: str = "kl",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_schedule: str = "constant",
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        nonfinite_check_every: int = 50,
        augment: str = "none",
        views: int = 1,
        channels_last: bool = False,
        compile: bool = False,
        extra_local_maps: list[str] | None = None,
        delta: float = 0.0,
        score_penalty: float = 0.0,
        score_clip: float = 0.0,
        lr_warmup: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not lr > 0:
            raise SettingError(f"lr={lr}: the learning rate must be > 0", setting="lr")
        if not weight_decay >= 0:
            raise SettingError(f"weight_decay={weight_decay}: must be >= 0", setting="weight_decay")
        if lr_schedule not in ("constant", "cosine"):
            raise SettingError(f"lr_schedule={lr_schedule!r}: choose 'constant' or 'cosine'", setting="lr_schedule")
        if views not in (1, 2):
            raise SettingError(f"views={views}: choose 1 or 2", setting="views")
        if views == 2 and augment == "none":
            raise SettingError("views=2 with augment='none' would compare two identical views; set augment", setting="views")
        if delta > 0 and views != 2:
            raise SettingError(f"delta={delta}: the local-to-local term compares two views; set views=2", setting="delta")
        if not 0 <= lr_warmup < 1:  # also catches NaN
            raise SettingError(
                f"lr_warmup={lr_warmup}: the fraction of the run spent warming up must be in [0, 1)", setting="lr_warmup"
            )
        self.augment = Augment(augment)
        mean = tuple(mean) if mean is not None else (0.5,) * in_channels
        std = tuple(std) if std is not None else (0.5,) * in_channels
        if len(mean) != in_channels or len(std) != in_channels:
            raise SettingError(
                f"mean={mean} and std={std} need one value per channel (in_channels={in_channels})", setting="mean"
            )
        self.normalize = Normalize(mean, std)
        self._normalization = {"mean": list(mean), "std": list(std)}
        self.encoder = build_encoder(arch, in_channels=in_channels, input_size=input_size, z_dim=z_dim, **(arch_kwargs or {}))
        self.objective = DIMObjective(
            z_dim,
            self.encoder.local_channels,
            alpha=alpha,
            beta=beta,
            gamma=gamma,
            global_estimator=global_estimator,
            local_estimator=local_estimator,
            negatives=negatives,
            critic=critic,
            critic_hidden=critic_hidden,
            prior=prior,
            critic_temperature=critic_temperature,
            extra_channels=check_maps(self.encoder, extra_local_maps or []),
            delta=delta,
            score_penalty=score_penalty,
            score_clip=score_clip,
        )
        self._maps = tuple(extra_local_maps or ())  # what the encoder is asked for besides C(x)
        self._first_bad_step: torch.Tensor | None = None
        self._compiled: tuple | None = None  # (encoder, objective) compiled, kept out of the state dict

    @property
    def hp(self) -> AttributeDict:
        """The ``__init__`` arguments as save_hyperparameters() recorded them (what ``hparams`` is,
        typed so that attribute reads type-check)."""
        return cast("AttributeDict", self.hparams)

    def setup(self, stage: str) -> None:
        if self.hp.channels_last:
            self.to(memory_format=torch.channels_last)  # parameters keep their identity: optimisers see them
        if self.hp.compile and self._compiled is None:
            self._compiled = (torch.compile(self.encoder), torch.compile(self.objective))

    # -- the encoder as the rest of the product sees it ------------------------------------------
    def encoder_config(self) -> dict:
        """What a serving artifact needs to rebuild the encoder without this module."""
        hp = self.hp
        return {
            "arch": hp.arch,
            "arch_kwargs": {
                "in_channels": hp.in_channels,
                "input_size": hp.input_size,
                "z_dim": hp.z_dim,
                **(hp.arch_kwargs or {}),
            },
            "normalization": dict(self._normalization),
        }

    def forward(self, images: torch.Tensor, vectors: str = "mu") -> torch.Tensor:
        """uint8 or [0, 1] float images (B, C, H, W) -> mu (B, z_dim), or with ``vectors="pooled"``
        the vector the heads read, or with ``vectors="local"`` the flattened local feature map
        (B, c * h * w) (``EncoderOutput.vectors``)."""
        return self.encoder(self.normalize(images)).vectors(vectors)

    def export(self, path: str | Path, state_dict: dict | None = None, **info) -> Path:
        """Writes the serving artifact of this encoder, or of the encoder weights found in a
        checkpoint's ``state_dict`` (keys ``encoder.*``), to the folder ``path``."""
        from infomax.artifact import save_artifact  # keeps safetensors out of training start-up

        encoder = self.encoder
        if state_dict is not None:
            encoder = copy.deepcopy(self.encoder)
            prefix = "encoder."
            encoder.load_state_dict({k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)})
        saved = save_artifact(encoder, path, **self.encoder_config(), **info)
        self._export_local_critic(Path(saved), state_dict)
        return saved

    def _export_local_critic(self, folder: Path, state_dict: dict | None) -> None:
        """Saves the local critic beside the encoder (infomax.explain: heat maps of why two images
        match), from ``state_dict`` when exporting a checkpoint; removes a stale one when the local
        term is off."""
        from infomax.explain import remove_local_critic, save_local_critic

        critic = self.objective.local_critic
        if critic is None:
            remove_local_critic(folder)
            return
        if state_dict is not None:
            critic = copy.deepcopy(critic)
            prefix = "objective.local_critic."
            critic.load_state_dict({k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)})
        hp = self.hp
        sha = json.loads((folder / "encoder.json").read_text())["weights_sha256"]
        save_local_critic(
            critic,
            folder,
            kind=hp.critic,
            x_dim=hp.z_dim,
            y_dim=self.encoder.local_channels,
            hidden=hp.critic_hidden,
            temperature=hp.critic_temperature,
            encoder_sha256=sha,
        )

    @classmethod
    def from_checkpoint_state(cls, state: dict) -> DeepInfoMax:
        """Rebuilds the module from a loaded checkpoint dict (``torch.load(..., weights_only=True)``)."""
        hparams = {k: v for k, v in state["hyper_parameters"].items() if not k.startswith("_")}
        module = cls(**hparams)
        module.load_state_dict(state["state_dict"])
        return module

    # -- training -----------------------------------------------------------------------------
    def _losses(self, batch):
        images = batch[0]
        encoder, objective = self._compiled or (self.encoder, self.objective)
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images
        maps = {"maps": self._maps} if self._maps else {}
        if self.hp.views == 2:
            # One encoder pass over both views: batch norm sees them together, and half the launches.
            both = self._prepare(torch.cat([self.augment(x), self.augment(x)]))
            out = encoder(both, **maps)
            n = x.shape[0]
            return objective(out.rows(slice(None, n)), out.rows(slice(n, None)))
        return objective(encoder(self._prepare(self.augment(x)), **maps))

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        return x.contiguous(memory_format=torch.channels_last) if self.hp.channels_last else x

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        losses = self._losses(batch)
        self._check_finite(losses.loss)
        self.log("train/loss", losses.loss, prog_bar=True)
        self.log_dict({"train/global_mi": losses.global_mi, "train/local_mi": losses.local_mi, "train/prior": losses.prior})
        self.log_dict(_optional("train", losses))
        return losses.loss

    def validation_step(self, batch, batch_idx: int) -> None:
        losses = self._losses(batch)
        self.log_dict(
            {
                "val/loss": losses.loss,
                "val/global_mi": losses.global_mi,
                "val/local_mi": losses.local_mi,
                "val/prior": losses.prior,
                **_optional("val", losses),
            },
            sync_dist=True,
        )

    def _check_finite(self, loss: torch.Tensor) -> None:
        # On a GPU, .item() every step would stall the pipeline: remember the first bad step on
        # the device and look at it every `nonfinite_check_every` steps.
        step = self.global_step
        if self._first_bad_step is None or self._first_bad_step.device != loss.device:
            self._first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss.detach())
        self._first_bad_step = torch.where(
            bad & (self._first_bad_step < 0), torch.full_like(self._first_bad_step, step), self._first_bad_step
        )
        if loss.device.type == "cpu" or step % self.hp.nonfinite_check_every == 0:
            self.raise_if_nonfinite()

    def raise_if_nonfinite(self) -> None:
        if self._first_bad_step is not None and (first := int(self._first_bad_step)) >= 0:
            raise NonFiniteLossError(
                f"the training loss became NaN or infinite at step {first} (epoch {self.current_epoch}); "
                f"training stopped so that no NaN model is exported. Try a lower learning rate "
                f"(model.lr={self.hp.lr}), precision 32, or check the input data."
            )

    def on_train_epoch_end(self) -> None:
        self.raise_if_nonfinite()

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hp.lr, weight_decay=self.hp.weight_decay)
        if self.hp.lr_schedule == "constant" and not self.hp.lr_warmup:
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        timer = next((cb for cb in self.trainer.callbacks if isinstance(cb, Timer)), None)

        warmup = self.hp.lr_warmup
        cosine = self.hp.lr_schedule == "cosine"

        def factor(step: int) -> float:
            frac = run_progress(step, total, timer)
            if warmup > 0:
                if frac < warmup:
                    return frac / warmup
                frac = (frac - warmup) / (1 - warmup)
            return 0.5 * (1 + math.cos(math.pi * frac)) if cosine else 1.0

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _optional(stage: str, losses) -> dict:
    """The figures of the options that are on (logged only then, so that runs without them keep
    their columns)."""
    return {
        f"{stage}/{k}": v
        for k, v in (("local_local_mi", losses.local_local_mi), ("score_penalty", losses.score_penalty))
        if v is not None
    }


def run_progress(step: int, total_steps: int, timer=None) -> float:
    """How far a run is, in [0, 1]: the larger of steps done / ``total_steps`` and, when the run has
    a time budget (``--trainer.max_time``, Lightning's ``Timer`` callback), time spent / budget.

    With a time budget the epochs bound is usually far away, so a step-based cosine would hardly
    decay; annealing on whichever end comes first brings the learning rate to 0 when the run stops.
    """
    frac = min(step, total_steps) / total_steps
    left = timer.time_remaining() if timer is not None else None
    if left is not None:
        spent = timer.time_elapsed()
        budget = spent + left
        if budget > 0:
            frac = max(frac, min(1.0, spent / budget))
    return frac
