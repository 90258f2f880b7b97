"""Base class of the gradient-level strategies: task weights from the Gramian of the task gradients.

Almost every gradient method (MGDA, PCGrad, GradVac, CAGrad, IMTL-G, Nash-MTL, Aligned-MTL,
UPGrad, GradNorm, ...) returns a combination ``Jᵀw`` of the per-task gradients whose coefficients
``w`` depend only on the Gramian ``G = J Jᵀ`` (K×K) and the losses. So the step computes ``G``
(on the shared parameters, or on the shared representation), ``w = f(G, losses, state)``, and
returns ``Σ wᵢ.detach()·Lᵢ`` to Lightning's normal backward: gradient accumulation, clipping,
mixed precision, checkpointing and DDP keep working. The returned loss carries the gradients the
K per-task passes already hold (each head's ``wᵢ ∂Lᵢ/∂φ``, and ``Jᵀw`` on the shared parameters or
``Σ wᵢ ∂Lᵢ/∂z`` on the representation), so that backward does not run through the heads (nor,
on the parameter route, the trunk) again (see :mod:`lightning_multiloss.gradients`).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from lightning_multiloss.errors import MultiLossError, NonFiniteLossError
from lightning_multiloss.gradients import (
    DDPMode,
    Route,
    loss_with_combined_gradient,
    parameter_route_gradients,
    representation_route_gradients,
)
from lightning_multiloss.weighting._base import GradientWeighting, WeightedLoss, weighted_sum

__all__ = ["DDPMode", "GramianWeighting", "NonFiniteWeightsError", "Route", "psd_up_to_rounding"]


_FLOAT64_EPS = float(np.finfo(np.float64).eps)
_FLOAT32_EPS = float(np.finfo(np.float32).eps)
_OPENMP_BACKEND = "parallel backend: OpenMP" in torch.__config__.parallel_info()
_UNSET = object()


class NonFiniteWeightsError(NonFiniteLossError):
    """A strategy's non-finite weights from a finite Gramian: its failure, not the batch's, so
    ``on_nonfinite="skip"`` does not skip it (a non-finite Gramian, from a NaN gradient, is skipped)."""


def psd_up_to_rounding(gramian: np.ndarray, rounding: float) -> np.ndarray:
    """The symmetric ``gramian`` as the positive semi-definite matrix it is up to ``rounding``.

    A Gramian computed in float32 from linearly dependent gradients (two tasks with parallel
    gradients, a task's gradient the sum of two others', more tasks than the gradients' rank) has
    "zero" eigenvalues of about ``1e-7·λ_max``, of either sign: IMTL-G and Aligned-MTL would count
    them as rank and divide by them, and CAGrad's inner problem would meet an indefinite matrix.
    The rounding of ``G_ij`` is relative to ``‖g_i‖‖g_j‖``, so the rank is decided on the cosines
    ``C = D^{-1/2} G D^{-1/2}`` (``D`` the diagonal): their eigenvalues below ``K·ε·λ_max(C)``
    (``ε = rounding``, that of the dtype ``G`` was computed in: TorchJD's rank tolerance) are set
    to zero, and so are negative ones, then ``G = D^{1/2} C D^{1/2}``. So gradients of very
    different sizes keep their directions (a gradient 10⁸ times smaller than another still counts),
    a matrix whose cosines clear the tolerance (or are zero to float64's rounding), or one of a
    half precision (whose tolerance would reach real eigenvalues), is returned as it is (the same
    array), and a task
    with a zero gradient keeps its exact zero row and column.

    >>> g = np.array([[1.0, 3.0], [3.0, 9.0 + 1e-6]])  # g₂ = 3·g₁, with a float32 rounding of 9
    >>> bool(np.linalg.eigvalsh(psd_up_to_rounding(g, float(np.finfo(np.float32).eps)))[0] < 1e-14)
    True
    """
    scale = np.sqrt(np.diagonal(gramian).clip(min=0.0))
    used = scale > 0.0
    if not used.any() or rounding > _FLOAT32_EPS:
        # A half-precision Gramian (not one of the routes', which are float32 or wider): its
        # rounding, K·ε·λ_max, would reach the eigenvalues of well-conditioned gradients.
        return gramian
    norms = scale[used]
    cosines = gramian[np.ix_(used, used)] / np.outer(norms, norms)
    k = len(norms)
    # The common case, about 20 times cheaper than the eigenvalues: λ_min(C) ≥ K²ε ≥ K·ε·λ_max(C).
    # torch's cholesky_ex reports failure without raising; NumPy's wrapper, run once per training
    # step after the backward has evicted the host's caches, measured 3-5 times its cost there.
    shifted = torch.from_numpy(cosines - k * k * rounding * np.eye(k))
    if int(torch.linalg.cholesky_ex(shifted).info) == 0:
        return gramian
    values, vectors = np.linalg.eigh(cosines)
    top = float(values[-1])
    tolerance = k * rounding * top
    # Eigenvalues that are zero to float64's own rounding already need no rebuild (it would only
    # add rounding to an exact matrix, such as that of identical float64 gradients).
    negligible = k * _FLOAT64_EPS * top
    if ((values >= tolerance) | (np.abs(values) <= negligible)).all():
        return gramian
    kept = np.where(values >= tolerance, values, 0.0)
    cleaned = np.zeros_like(gramian)
    block = (vectors * kept) @ vectors.T * np.outer(norms, norms)
    cleaned[np.ix_(used, used)] = 0.5 * (block + block.T)
    return cleaned


@contextmanager
def _one_intra_op_thread() -> Iterator[None]:
    """Run the host solvers on one thread: their K×K operations are far too small to share.

    Torch may split even a tiny batched solve or reduction over its intra-op threads; when the
    other cores are busy (data loading, other processes) each such operation then waits for a
    thread, which measured 3-5× slower solves on a loaded 2-core machine. Restored on exit. Only
    with the OpenMP backend, where the setting is the calling thread's own and cheap to change
    (the native backend refuses a change once its pool has started).
    """
    threads = torch.get_num_threads()
    if threads == 1 or not _OPENMP_BACKEND:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class GramianWeighting(GradientWeighting):
    r"""A strategy whose weights are a function of the Gramian ``G = J Jᵀ`` and the losses.

    Each training step, :class:`~lightning_multiloss.MultiTaskMixin` hands the strategy the
    shared representation or the shared parameters; it computes the Gramian of the per-task
    gradients (see :mod:`lightning_multiloss.gradients`), asks the subclass for the weights and
    returns

    .. math:: L = \sum_i \mathrm{sg}(w_i)\, L_i, \qquad w = f(G, L)

    whose gradient is :math:`J^\top w`, to Lightning's own backward. Evaluation steps reuse the
    last training weights (:attr:`last_weights`) and take no gradient.

    A subclass implements one pure map, :meth:`compute_weights`, from the Gramian and the losses
    (and its own state) to the weights. The base does the rest once for all: it checks the
    shapes, copies ``G`` and the losses to the host in one transfer (the step's only wait for the
    device), symmetrises ``G`` in float64, rejects non-finite values, checks the weights that
    come back and puts them on the Gramian's device and dtype.

    Args:
        route: ``"parameters"`` or ``"representation"`` (see :class:`GradientWeighting`).
        ddp: ``"exact"`` or ``"local"`` Gramian under DDP.

    Example:
        MGDA for two tasks in closed form, on the Jacobian ``[[-4, 1, 1], [6, 1, 1]]``:

        >>> import torch
        >>> from lightning_multiloss.weighting import GramianWeighting
        >>> class MGDA2(GramianWeighting):
        ...     def compute_weights(self, gramian, losses):
        ...         g11, g12, g22 = gramian[0, 0], gramian[0, 1], gramian[1, 1]
        ...         gamma = ((g22 - g12) / (g11 + g22 - 2 * g12)).clamp(0, 1)
        ...         return torch.stack([gamma, 1 - gamma])
        >>> w = MGDA2(route="parameters")
        >>> w.bind(["a", "b"])
        >>> theta = torch.zeros(3, requires_grad=True)
        >>> losses = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]) @ theta
        >>> w(losses, parameters=[theta]).weights
        tensor([0.6000, 0.4000])
    """

    gives_combined_gradient: ClassVar[bool] = True
    host_state: ClassVar[tuple[str, ...]] = ()
    """The names of the strategy's state tensors, which live on the host beside the solver.

    ``compute_weights`` runs on the host copy of ``G``, so its state (step counts, running
    averages, the last solution) stays there too: reading it costs no wait for the device, and
    ``.to(device)`` leaves it where it is. Each goes into checkpoints as a plain entry of the
    state dict under its own name (``weighting.<name>``); create each with ``device="cpu"``, so that
    a model made under ``torch.device("meta")`` has it too. With ``ddp="exact"`` it is the same on
    every DDP process, which computes it from the same values; with ``ddp="local"`` it is each
    process's own (DDP copies buffers from rank 0, not this host state).
    """

    def host_state_dict(self) -> dict[str, Tensor]:
        """A copy of the host state (:attr:`host_state`), by name: what the state dict holds of it."""
        return {name: value.clone() for name, value in self._host_tensors().items()}

    def _host_tensors(self) -> dict[str, Tensor]:
        """The host state by name, checked: each entry a tensor, and set once the strategy is bound
        (an unbound one may not have built it yet); a mistake would fail at the checkpoint without
        the entry's name (a number has no ``clone``), or leave the entry out of it silently."""
        found: dict[str, Tensor] = {}
        for name in self.host_state:
            value = getattr(self, name, _UNSET)
            if isinstance(value, Tensor):
                found[name] = value
            elif value is not _UNSET:
                raise MultiLossError(
                    f"weighting {self.name!r}: host state {name!r} must be a Tensor, got {type(value).__name__}; "
                    "keep it a tensor (e.g. torch.zeros((), dtype=torch.long) for a count, updated in place)"
                )
            elif self._task_names:
                raise MultiLossError(
                    f"weighting {self.name!r}: host state {name!r} (listed in host_state) is not set: create it as "
                    "a tensor in __init__ or build(), or leave it out of host_state"
                )
        return found

    def bind(self, task_names: Sequence[str]) -> None:
        super().bind(task_names)
        # Once build() has run: a missing or wrong entry fails before training.
        for name, value in self._host_tensors().items():
            if value.device.type != "cpu":
                raise MultiLossError(
                    f"weighting {self.name!r}: host state {name!r} is on {value.device}, not the host: create it "
                    "with device='cpu' (under `with torch.device(...)` or torch.set_default_device a new tensor "
                    "goes to that device)"
                )

    def load_host_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Take back a :meth:`host_state_dict` (of this process, or of another one in ``ddp="local"``
        mode, whose host state is each process's own); an error names a missing or misshapen entry."""
        for name, host in self.host_state_dict().items():
            value = state.get(name)
            if not isinstance(value, Tensor) or value.shape != host.shape:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise MultiLossError(
                    f"weighting {self.name!r}: host state {name!r} is {got}, the strategy's {tuple(host.shape)}"
                )
            getattr(self, name).copy_(value)

    def own_host_state(self) -> None:
        """Give this process its own copy of the host state where it is in shared memory:
        ``ddp_spawn`` hands each process the model's tensors there, and Lightning copies only the
        parameters and buffers back out, so the processes would count each other's steps."""
        for name, value in self.host_state_dict().items():
            if getattr(self, name).is_shared():
                setattr(self, name, value)  # the copy host_state_dict made

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name, value in self.host_state_dict().items():
            destination[prefix + name] = value

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Taken out before the base loads the rest, which would call them unexpected.
        saved = {name: state_dict.pop(prefix + name, None) for name in self.host_state}
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        for name, value in saved.items():
            key = prefix + name
            if not hasattr(self, name):
                if value is not None:
                    unexpected_keys.append(key)
                continue
            host = getattr(self, name)
            if value is None:
                missing_keys.append(key)
            elif not isinstance(value, Tensor) or value.shape != host.shape:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                error_msgs.append(f"size mismatch for {key}: the checkpoint has {shape}, the model {tuple(host.shape)}")
            else:
                host.copy_(value)

    @abstractmethod
    def compute_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """The ``(K,)`` task weights from the ``(K, K)`` Gramian and the ``(K,)`` losses.

        Both arrive as float64 CPU tensors, checked finite, ``gramian`` symmetric and positive
        semi-definite to float64 rounding (:func:`psd_up_to_rounding`: eigenvalues within the
        rounding of the dtype it was computed in are zero, so its rank is the gradients'). The combined
        update direction is ``Jᵀw``. In training it is called once per step with the same values
        on every DDP process (``ddp="exact"``), so a stateful strategy stays identical across
        processes; it must not change its state when ``self.training`` is false.
        """

    def weights_from_gramian(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """The ``(K,)`` weights for a Gramian and losses of any floating dtype and device.

        Returned on the Gramian's device, in its dtype. The Gramian and the losses reach the host
        in one transfer, the only wait for the device in a training step of a Gramian strategy;
        everything after it, up to the weights' copy back, runs on the host (:meth:`_solve_on_host`).
        """
        k = self._check_shapes(gramian, losses)
        rounding = float(torch.finfo(gramian.dtype if gramian.is_floating_point() else torch.float64).eps)
        # One tensor (cat promotes the dtypes), one transfer (the step's one wait), then float64.
        packed = torch.cat([gramian.reshape(-1), losses]).detach().cpu().to(torch.float64)
        with _one_intra_op_thread():
            weights = self._solve_on_host(packed, k, rounding)
        out_dtype = gramian.dtype if gramian.is_floating_point() else torch.get_default_dtype()
        return weights.to(device=gramian.device, dtype=out_dtype)

    def _check_shapes(self, gramian: Tensor, losses: Tensor) -> int:
        """``K``, after checking that ``G`` is ``(K, K)`` and the losses ``(K,)``."""
        if gramian.ndim != 2 or gramian.shape[0] != gramian.shape[1]:
            raise MultiLossError(
                f"weighting {self.name!r}: the Gramian must be a square (K, K) matrix, got shape {tuple(gramian.shape)}"
            )
        k = gramian.shape[0]
        if k == 0:
            raise MultiLossError(f"weighting {self.name!r}: the Gramian is empty (no task)")
        if losses.shape != (k,):
            raise MultiLossError(
                f"weighting {self.name!r}: losses must have shape ({k},) to match the Gramian, "
                f"got {tuple(losses.shape)}"
            )
        if self.num_tasks and k != self.num_tasks:
            raise MultiLossError(
                f"weighting {self.name!r} is bound to {self.num_tasks} tasks but got a {k}×{k} Gramian"
            )
        return int(k)

    def _solve_on_host(self, packed: Tensor, k: int, rounding: float) -> Tensor:
        """The weights from the float64 host copy of ``G`` (flattened) followed by the losses;
        ``rounding``: the relative precision of the dtype ``G`` was computed in."""
        host = packed.numpy()  # NumPy for the checks: each operation costs torch several times more
        gramian = host[: k * k].reshape(k, k)
        values = packed[k * k :]
        if not np.isfinite(host).all():
            if not np.isfinite(gramian).all():
                raise NonFiniteLossError(
                    f"weighting {self.name!r}: the Gramian of the task gradients is not finite "
                    f"(diagonal {np.diagonal(gramian).tolist()})"
                )
            raise NonFiniteLossError(f"weighting {self.name!r}: the task losses are not finite: {values.tolist()}")
        if (np.diagonal(gramian) < 0).any():
            raise MultiLossError(
                f"weighting {self.name!r}: not a Gramian J Jᵀ: its diagonal (the squared gradient norms) "
                f"has negative entries {np.diagonal(gramian).tolist()} (tasks {list(self.task_names)})"
            )
        g = torch.from_numpy(psd_up_to_rounding(0.5 * (gramian + gramian.T), rounding))
        weights = self.compute_weights(g, values)
        if not isinstance(weights, Tensor) or weights.shape != (k,):
            shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
            raise MultiLossError(f"weighting {self.name!r}: compute_weights must return shape ({k},), got {shape}")
        if not all(map(math.isfinite, weights.tolist())):
            # The strategy's failure (of one of your own, or an overflow): it stops training as a
            # non-finite loss does, every DDP process together (the mixin adds the step).
            raise NonFiniteWeightsError(
                f"weighting {self.name!r} gave non-finite weight(s) {weights.tolist()} from the Gramian "
                f"{g.tolist()} (tasks {list(self.task_names)})"
            )
        return weights

    def forward(
        self,
        losses: Tensor,
        *,
        representation: Tensor | None = None,
        parameters: Sequence[Tensor] | None = None,
        task_parameters: Sequence[Sequence[Tensor]] | None = None,
    ) -> WeightedLoss:
        """``Σ wᵢ.detach()·Lᵢ`` with ``w`` from the Gramian of this step's task gradients.

        The mixin passes ``representation`` (route ``"representation"``) or ``parameters``
        (route ``"parameters"``). In evaluation mode no gradient is taken: the weights of the
        last training step are used.

        With ``task_parameters`` (for each task, the parameters only its loss depends on; on the
        representation route, those above the representation), the K backward passes also take
        each task's gradients with respect to its own parameters, and the returned loss has the
        value ``Σ wᵢLᵢ`` and, without another pass through the heads, the gradient ``wᵢ ∂Lᵢ/∂φ`` on
        a task's own ``φ`` and ``Jᵀw`` on the shared ``parameters`` (parameter route) or
        ``Σ wᵢ ∂Lᵢ/∂z`` on the ``representation``, from where the backward goes on through the
        trunk (see :mod:`lightning_multiloss.gradients`).
        """
        if not self.training:
            return weighted_sum(self.last_weights, losses)
        if self.route == "parameters" and parameters is None:
            raise MultiLossError(
                f"weighting {self.name!r} needs the task gradients: use it through MultiTaskMixin's training_step "
                "(which passes the shared parameters), not on the losses alone"
            )
        if self.route == "parameters":
            assert parameters is not None
            taken = parameter_route_gradients(
                losses, ddp=self.ddp, parameters=parameters, task_parameters=task_parameters, strategy=self.name
            )
            shared: Sequence[Tensor] = parameters
        else:
            taken = representation_route_gradients(
                losses,
                ddp=self.ddp,
                representation=representation,
                task_parameters=task_parameters,
                strategy=self.name,
            )
            assert representation is not None  # the route refuses a missing one, naming the call to add
            shared = [representation]
        weights = self.weights_from_gramian(taken.gramian, taken.losses)
        if task_parameters is None:
            return weighted_sum(weights, losses)
        loss = loss_with_combined_gradient(losses, weights, taken, shared, task_parameters)
        return WeightedLoss(loss, weights.detach())
