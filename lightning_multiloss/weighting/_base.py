"""The strategy contract: a :class:`Weighting` turns per-task losses into one loss."""

from __future__ import annotations

import copy
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypedDict

import torch
from torch import Tensor, nn

from lightning_multiloss._numbers import out_of_half_precision
from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.gradients import DDPMode, Route
from lightning_multiloss.weighting._state import TaskEpochMean


class WeightedLoss(NamedTuple):
    """What a weighting returns for one step."""

    loss: Tensor
    """The scalar that Lightning backpropagates."""
    weights: Tensor
    """``(K,)``, detached: the effective weight of each task in ``loss`` (for logging)."""


def _described(value: object) -> str:
    """What an error message says of a returned value: a tensor's shape, or another object's type."""
    return f"of shape {tuple(value.shape)}" if isinstance(value, Tensor) else f"of type {type(value).__name__}"


class _NameOrClassName:
    """The default :attr:`Weighting.name`: ``""`` on the class (not registered: the app names such a
    strategy by its config's ``_target_``), the class's own name on an instance, so that every
    message about a user's unregistered strategy says which one it is. :func:`register` sets a
    plain string on the class, which its subclasses inherit."""

    def __get__(self, instance: object, owner: type) -> str:
        return "" if instance is None else owner.__name__


@dataclass(frozen=True)
class Progress:
    """Where training stands, as the Callback reports it before each optimizer step."""

    step: int
    """Optimizer steps completed (``trainer.global_step``), not batches."""
    epoch: int
    """Epochs completed (``trainer.current_epoch``)."""
    total_steps: int | None = None
    """The planned number of optimizer steps, when known."""
    total_epochs: int | None = None
    """The planned number of epochs, when known."""
    fit_steps: int | None = None
    """The optimizer steps this fit reaches, where they differ from ``total_steps`` (a resumed run
    that keeps the plan training started with); ``None``: ``total_steps``. Given to
    :meth:`Weighting.check_plan` only."""


# nn.Module's own attributes, and the strategy's that no reset restores.
_MODULE_ATTRIBUTES = frozenset(vars(nn.Module())) | {"_task_names", "_owner", "_at_bind", "_bound_dtype"}


def _restorable_in_place(live: Tensor, value: Tensor) -> bool:
    """Whether ``live`` can take ``value`` in place: the same shape and device, a dense tensor of
    its own (not a broadcast view), outside any graph, not an inference tensor (Lightning's
    evaluation makes them) nor in memory shared with other processes (``ddp_spawn``)."""
    return (
        live.shape == value.shape
        and live.device == value.device
        and live.is_contiguous()
        and live.grad_fn is None
        and not live.is_inference()
        and not live.is_shared()
    )


def _numbers_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, int | float) for v in value)


class Weighting(nn.Module, ABC):
    """Base class of every loss-weighting strategy.

    A strategy is an ``nn.Module``: learnable weights are its ``nn.Parameter``s (so they reach
    the optimizer, DDP and checkpoints like any other parameter), running state lives in
    buffers. It is created with its hyper-parameters only, then :meth:`bind` gives it the task
    names (the mixin does that), which is when parameters sized by the number of tasks are built.

    The contract, all of it typed and public:

    - subclasses implement :meth:`forward` (``(K,)`` losses to a :class:`WeightedLoss`) and,
      optionally, :meth:`build`;
    - :attr:`last_weights` (a buffer) holds the weights of the last training step: calling the
      strategy records them, the Callback plots them, evaluation steps of the gradient
      strategies reuse them; it is the one place where the current weights live;
    - the Callback calls the hooks :meth:`set_progress` (before each training batch),
      :meth:`constrain` (inside each step of an optimizer holding the strategy's parameters),
      :meth:`after_optimizer_step` and :meth:`end_training_epoch`;
    - a strategy with ``uses_epoch_losses = True`` owns :attr:`epoch_losses`, a
      :class:`TaskEpochMean` that the mixin updates each training step and that reduces itself
      over processes; :meth:`on_epoch_losses` receives its means at each epoch's end.

    ``self.training`` tells a training step from an evaluation one (the mixin sets it for each
    step, whatever the module's own mode): evaluation must not change any state.
    """

    if TYPE_CHECKING:
        name: ClassVar[str]
    else:
        name = _NameOrClassName()
    """Registry name, set by :func:`~lightning_multiloss.weighting.register`; an instance of a class
    that is not registered (nor inherits a registered class's name) gives its class's name."""
    min_tasks: ClassVar[int] = 1
    max_tasks: ClassVar[int | None] = None
    uses_epoch_losses: ClassVar[bool] = False
    """Whether the strategy needs each task's epoch-mean training loss (:attr:`epoch_losses`)."""
    needs_nonnegative_losses: ClassVar[bool] = False
    """Whether a negative task loss breaks the method (it takes the loss's log or a ratio of
    losses, or its objective has no minimum below 0). The mixin then checks the training losses
    with its finiteness check (no wait for the device at each step) and stops training with the
    task, the step and the value."""
    last_weights_are_state: ClassVar[bool] = False
    """Whether :attr:`last_weights` goes into checkpoints: where the weights are not a function of
    the strategy's own state (the gradient strategies, which also reuse them in evaluation, and
    those that weight each step's losses: FAMO, GLS, STCH, RLW), so that :meth:`current_weights`
    of a loaded model is what training last used; the others recompute them from their state."""

    last_weights: Tensor
    epoch_losses: TaskEpochMean

    def __init__(self) -> None:
        super().__init__()
        self._task_names: tuple[str, ...] = ()

    # -- binding --------------------------------------------------------------------------
    @property
    def task_names(self) -> tuple[str, ...]:
        """The task names, in the order of the loss vector (empty before :meth:`bind`)."""
        return self._task_names

    @property
    def num_tasks(self) -> int:
        return len(self._task_names)

    def bind(self, task_names: Sequence[str]) -> None:
        """Attach the strategy to its tasks and build what depends on their number."""
        self._check_initialised()
        names = tuple(task_names)
        if self._task_names:
            if names != self._task_names:
                raise MultiLossError(
                    f"weighting {self.name!r} is already bound to tasks {list(self._task_names)}, "
                    f"cannot bind it to {list(names)}; create one weighting per model"
                )
            return
        k = len(names)
        if k < self.min_tasks:
            raise MultiLossError(
                f"weighting {self.name!r} needs at least {self.min_tasks} tasks, got {k}: {list(names)}"
            )
        if self.max_tasks is not None and k > self.max_tasks:
            raise MultiLossError(
                f"weighting {self.name!r} takes at most {self.max_tasks} tasks, got {k}: {list(names)}"
            )
        self._task_names = names
        self.register_buffer("last_weights", torch.ones(k), persistent=self.last_weights_are_state)
        if self.uses_epoch_losses:
            self.epoch_losses = TaskEpochMean(k)
        self.build(k)
        self._bound_dtype = torch.get_default_dtype()
        self._at_bind = self._plain_state()

    def _check_initialised(self) -> None:
        """A subclass's ``__init__`` that does not call the base's leaves no ``_task_names``, which
        torch's Module reports as a missing attribute without saying why."""
        if "_task_names" not in vars(self):
            cls = type(self).__name__
            raise MultiLossError(
                f"weighting {self.name!r}: {cls}.__init__ must call super().__init__() (before setting "
                "its own attributes): the base class sets up the module and the task binding"
            )

    def claim(self, owner: str) -> None:
        """Tie the strategy to the one model that uses it (``owner``: that model's token; the mixin's
        ``configure_multitask`` calls it). A strategy holds state (learned parameters, running means):
        one object in two models (a sweep's loop reusing ``w = Uncertainty()``) would start the
        second from the first one's, so a strategy claimed by another owner is refused. Copies and
        pickles of a strategy are unclaimed."""
        held = self.__dict__.get("_owner")
        if held is not None and held != owner:
            raise MultiLossError(
                f"weighting {self.name!r} was configured in another module already; a weighting holds "
                "state (learned parameters, running means): create one weighting per model (the module may "
                "be one whose __init__ failed after configure_multitask: create the weighting anew, or pass "
                "copy.copy(weighting), which is unclaimed)"
            )
        self.__dict__["_owner"] = owner

    def __getstate__(self) -> dict[str, Any]:
        # Copies and pickles are unclaimed: a copied model claims its copy again, and a strategy
        # pickled among a checkpoint's hyper-parameters is the new model's once loaded.
        state: dict[str, Any] = super().__getstate__()
        state.pop("_owner", None)
        return state

    def build(self, num_tasks: int) -> None:
        """Create parameters and buffers sized by ``num_tasks`` (called once, by :meth:`bind`)."""

    PRECISE_STATE: ClassVar[tuple[str, ...]] = ()
    """Buffers that keep float32 (or a wider dtype) when the module is cast to a half dtype
    (``precision="bf16-true"`` or ``"16-true"``, ``.half()``): the state of the strategy's own update
    rule, which half precision stalls (bfloat16 rounds Adam's ``beta2 = 0.999`` to 1 and stops a
    count at 256). They still follow the module's device."""

    def _apply(self, fn: Any, recurse: bool = True) -> Weighting:
        kept = {name: self._buffers.get(name) for name in self.PRECISE_STATE}
        super()._apply(fn, recurse)
        for name, before in kept.items():
            after = self._buffers.get(name)
            if before is not None and after is not None:
                # The values before the cast, not its rounding of them (a resumed run converts the
                # module after loading the checkpoint).
                self._buffers[name] = out_of_half_precision(before, after)
        return self

    def reset_parameters(self) -> None:
        """Give the strategy's parameters and buffers the values :meth:`bind` gave them, in place
        (on their device, in their dtype), and start its epoch means afresh.

        What a module made on the meta device needs once ``to_empty`` has given it memory, to train
        from scratch (PyTorch's convention, which Lightning follows where it materialises a model
        made under ``trainer.init_module(empty_init=True)``); a checkpoint loaded after it takes
        precedence, as ever.
        """
        if not self._task_names:
            return
        # The parameters and buffers of a copy bound anew (on the CPU: this one may be on the meta
        # device; in float64 for a float64 strategy, whose first values float32 would round),
        # written into this one's, which an optimizer may hold.
        fresh = copy.copy(self)  # shares the configuration; bind() gives it tensors of its own
        vars(fresh).update(_parameters={}, _buffers={}, _modules={}, _non_persistent_buffers_set=set(), _task_names=())
        default = torch.get_default_dtype()
        # The default dtype it was bound under (float64 under Lightning's init_module for 64-true):
        # its first values in that dtype's rounding. Process-wide for the moment of the bind.
        torch.set_default_dtype(self.__dict__.get("_bound_dtype", torch.float32))
        try:
            with torch.device("cpu"):
                fresh.bind(self._task_names)
        finally:
            torch.set_default_dtype(default)
        with torch.no_grad():
            for name, tensor in [*self._parameters.items(), *self._buffers.items()]:
                if tensor is not None and not tensor.is_meta:
                    tensor.copy_(getattr(fresh, name))
        # The counters, flags and host state as they were once bound (made in __init__ or build());
        # a strategy pickled by an earlier version kept no record of them: those build() makes.
        initial = self.__dict__.get("_at_bind")
        if initial is None:
            initial = fresh._plain_state()
            warnings.warn(
                f"weighting {self.name!r} was made by an earlier version of lightning-multiloss (a checkpoint's "
                "hyper-parameters): reset_parameters() restores what its build() makes, not the counters made "
                "when it was created; create the strategy anew for its whole initial state",
                stacklevel=2,
            )
        for name, value in initial.items():
            live = self.__dict__.get(name)
            if isinstance(value, Tensor) and isinstance(live, Tensor) and _restorable_in_place(live, value):
                with torch.no_grad():
                    live.copy_(value)  # in place: a handle on it, or an optimizer of the strategy's own, stays
            else:
                self.__dict__[name] = value.clone() if isinstance(value, Tensor) else copy.copy(value)
        if self.uses_epoch_losses:
            self.epoch_losses.reset()

    def _plain_state(self) -> dict[str, Any]:
        """The strategy's own state outside its parameters and buffers, copied: the plain values
        (numbers, flags, lists of numbers, ``None``) and tensors of its private attributes and of its
        host state (the Gramian strategies' counters and running values), which
        :meth:`reset_parameters` puts back as they were when it was bound. Public configuration
        (``lr``, ``seed``) is left out, as are objects of other kinds (dicts, generators): a
        strategy of one's own resets those in :meth:`reset_parameters`, then calls ``super()``."""
        host = set(getattr(self, "host_state", ()))
        kept: dict[str, Any] = {}
        for name, value in vars(self).items():
            if name in _MODULE_ATTRIBUTES or not (name.startswith("_") or name in host):
                continue
            if isinstance(value, Tensor):
                kept[name] = value.detach().clone()
            elif value is None or isinstance(value, bool | int | float | str) or _numbers_list(value):
                kept[name] = copy.copy(value)
        return kept

    def set_unsaved_state(self) -> None:
        """Set the buffers that checkpoints leave out from the configuration and the loaded state;
        called once a ``load_state_dict`` has loaded the strategy's entries. They would otherwise
        keep what they held before the load: the first values (``last_weights`` of ones after
        ``load_from_checkpoint``) or, in a model made on the meta device and then ``to_empty``,
        uninitialised memory (fixed weights of 1e-18 that trained without an error). The base sets
        :attr:`last_weights`, where it is not state, to the weights in force
        (:meth:`current_weights`); a subclass with buffers of its own outside checkpoints sets
        them first, then calls ``super()``.
        """
        last = self._buffers.get("last_weights")
        if last is not None and not last.is_meta and "last_weights" in self._non_persistent_buffers_set:
            with torch.no_grad():
                last.copy_(self.current_weights())

    OPTIONAL_STATE: ClassVar[tuple[str, ...]] = ("last_weights",)
    """State keys a checkpoint may lack (earlier versions left them out): loading keeps the current value."""

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        if "last_weights" in self._non_persistent_buffers_set:
            # A checkpoint of another strategy, whose last weights were state: this one computes its
            # own from its state, so a switch of strategy (MGDA's run fine-tuned with fixed weights)
            # loads strictly. The mixin's warning of the switch says so.
            state_dict.pop(prefix + "last_weights", None)
        for name in self.OPTIONAL_STATE:
            if (
                prefix + name not in state_dict
                and name in self._buffers
                and name not in self._non_persistent_buffers_set
            ):
                state_dict[prefix + name] = self._buffers[name]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self._task_names:
            self.set_unsaved_state()

    # -- the step -------------------------------------------------------------------------
    @abstractmethod
    def forward(self, losses: Tensor) -> WeightedLoss:
        """Combine the ``(K,)`` task losses (in :attr:`task_names` order) into one loss."""

    def __call__(self, losses: Tensor, *args: Any, **kwargs: Any) -> WeightedLoss:
        if self._task_names and getattr(losses, "shape", None) != (len(self._task_names),):
            shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
            raise MultiLossError(
                f"weighting {self.name!r} is bound to {len(self._task_names)} tasks {list(self._task_names)}: "
                f"the losses must have shape ({len(self._task_names)},), got {shape}"
            )
        result: WeightedLoss = super().__call__(losses, *args, **kwargs)
        if self._task_names:
            # Types and shapes only (no value is read: no wait for the device), so that a custom
            # forward's mistake fails here, naming the strategy, not in the mixin's logging.
            k = len(self._task_names)
            if not (
                isinstance(result, WeightedLoss)
                and isinstance(result.loss, Tensor)
                and isinstance(result.weights, Tensor)
                and result.loss.ndim == 0
                and result.weights.shape == (k,)
            ):
                if isinstance(result, WeightedLoss):
                    got = f"a loss {_described(result.loss)} and weights {_described(result.weights)}"
                else:
                    got = f"a {type(result).__name__}"
                raise MultiLossError(
                    f"weighting {self.name!r}: forward must return WeightedLoss(loss, weights) with a scalar loss "
                    f"and ({k},) weights, got {got}"
                )
        if self.training and self._task_names:
            # A fresh copy on the device (no wait), so that a reference kept from an earlier step
            # (the Callback's record) keeps its values when a strategy updates its weights in place.
            # Straight into the registered buffer: nn.Module's __setattr__ costs more than the step's
            # arithmetic for a fixed sum.
            self._buffers["last_weights"] = result.weights.detach().clone()
        return result

    # -- reading the weights --------------------------------------------------------------
    def current_weights(self) -> Tensor:
        """The ``(K,)`` weights in force now: those the next training step would use.

        For strategies whose weights are their own state (fixed, learnable, uncertainty, DWA,
        ...) they are computed from that state, so they include the updates of the last
        optimizer step (``scheduled``: those at the progress given last); for strategies whose
        weights depend on the step's losses or gradients, they are the weights of the last
        training step (:attr:`last_weights`).
        A device tensor: reading it waits for the device, so not in the training step.
        """
        return self.last_weights.detach()

    def weights_by_task(self) -> dict[str, float]:
        """:meth:`current_weights` by task name, as plain floats (reads the device).

        >>> from lightning_multiloss.weighting import Fixed
        >>> w = Fixed({"digit": 0.5, "recon": 0.3})
        >>> w.bind(["digit", "recon"])
        >>> w.weights_by_task()
        {'digit': 0.5, 'recon': 0.30000001192092896}
        """
        return dict(zip(self.task_names, self.current_weights().float().cpu().tolist(), strict=True))

    # -- hooks called by the Callback -----------------------------------------------------
    def check_plan(self, progress: Progress) -> None:
        """Called once before the first training step of a fit, with the planned length.

        ``progress.total_steps`` and ``progress.total_epochs`` say how long training will run
        (``None`` when unknown). A strategy whose behaviour is planned ahead (a schedule) checks
        here that it is valid over the whole run, so that a mistake fails before training.
        """

    def set_progress(self, progress: Progress) -> None:
        """Called before each training batch with the current :class:`Progress`."""

    def constrain(self) -> None:
        """Put the strategy's parameters back into their domain (e.g. a weight clipped to [0, 1]).

        The Callback registers it as a step post-hook (``Optimizer.register_step_post_hook``) of
        each ``torch.optim.Optimizer`` that holds one of the strategy's parameters, for the fit: it
        runs inside each step of those optimizers, so everything after it (another callback's
        ``on_train_batch_end``, such as an EMA of the weights; the code after ``opt.step()`` under
        manual optimization) sees the parameters in their domain. It is called again after each
        training batch that took an optimizer step, just before :meth:`after_optimizer_step`, for
        the steps no hook saw (an optimizer that is no ``torch.optim.Optimizer``, or one set up
        during the fit; a tuner's trial steps, which run without the Callback): so it must leave
        parameters already in their domain as they are (idempotent).
        """

    def after_optimizer_step(self) -> None:
        """Called after the optimizer step(s) of each training batch that took one, after
        :meth:`constrain`: post-step updates."""

    def end_training_epoch(self) -> None:
        """Called at each training epoch's end, on every process.

        Strategies with ``uses_epoch_losses`` hand their epoch means (reduced over processes)
        to :meth:`on_epoch_losses`, then start the next epoch's means afresh.
        """
        if not self.uses_epoch_losses:
            return
        if self.epoch_losses.seen_any():
            self.on_epoch_losses(self.epoch_losses.means())
        self.epoch_losses.reset()

    def on_epoch_losses(self, epoch_losses: Tensor) -> None:
        """Called at each training epoch's end with the ``(K,)`` epoch-mean task losses.

        Only for strategies with ``uses_epoch_losses = True``; the means are over all
        processes, so every rank receives the same values. A task's mean leaves out the batches
        without any labelled sample of it (0 if it had none in the epoch).
        """

    @property
    def needs_callback(self) -> bool:
        """Whether this strategy relies on the Callback's hooks (a fixed sum does not)."""
        cls = type(self)
        return (
            cls.set_progress is not Weighting.set_progress
            or cls.constrain is not Weighting.constrain
            or cls.after_optimizer_step is not Weighting.after_optimizer_step
            or cls.uses_epoch_losses
        )

    @property
    def follows_planned_length(self) -> bool:
        """Whether the weights depend on how long training is planned (``Progress.total_steps``).

        The Callback keeps a resumed run on its first plan and warns when the resumed Trainer plans
        another length, for these strategies only. Default: any strategy that takes the progress
        (:meth:`set_progress`) may; one that reads only ``progress.step`` or ``progress.epoch``
        says ``False``.
        """
        return type(self).set_progress is not Weighting.set_progress

    def extra_repr(self) -> str:
        return f"tasks={list(self._task_names)}" if self._task_names else ""


class GradientOptions(TypedDict, total=False):
    """The options every gradient strategy takes (see :class:`GradientWeighting`)."""

    route: Route
    ddp: DDPMode


class GradientWeighting(Weighting):
    """Base class of the strategies that need per-task gradient information.

    The mixin detects them with ``isinstance`` and passes :meth:`forward` the shared
    representation (``route="representation"``: the tensor that ``forward`` marks with
    ``z = self.shared_representation(z)``) or the shared parameters (``route="parameters"``).

    Args:
        route: where the per-task gradients are taken: ``"parameters"`` (the shared parameters:
            one batched backward pass through the trunk) or ``"representation"`` (the shared
            representation: backward passes through the heads only).
        ddp: ``"exact"``: under DDP the gradient information is that of the global batch, so the
            update equals the single-process one; ``"local"``: each process uses its own batch's
            (no communication; the weights differ between processes).
    """

    last_weights_are_state: ClassVar[bool] = True
    gives_combined_gradient: ClassVar[bool] = False
    """Whether :meth:`forward` takes ``task_parameters`` and then returns a loss whose backward
    gives the combined gradient without another pass through the heads (nor, on the parameter
    route, the trunk) (see
    :meth:`GramianWeighting.forward <lightning_multiloss.weighting.GramianWeighting.forward>`)."""

    def __init__(self, route: Route = "parameters", ddp: DDPMode = "exact") -> None:
        super().__init__()
        if route not in ("parameters", "representation"):
            raise MultiLossError(
                f"weighting {self.name!r}: route must be 'parameters' or 'representation', got {route!r}"
            )
        if ddp not in ("exact", "local"):
            raise MultiLossError(f"weighting {self.name!r}: ddp must be 'exact' or 'local', got {ddp!r}")
        self.route: Route = route
        self.ddp: DDPMode = ddp

    def bind(self, task_names: Sequence[str]) -> None:
        self._check_initialised()  # before reading _task_names here
        first = not self._task_names
        super().bind(task_names)
        if first and self.num_tasks == 1:
            warnings.warn(
                f"weighting {self.name!r} with a single task ({self.task_names[0]!r}): there is nothing to balance, "
                f"its weight is {self.single_task_weight} and the per-task gradients are computed for nothing; "
                "use weighting='fixed'",
                UserWarning,
                stacklevel=2,
            )

    @property
    def single_task_weight(self) -> str:
        """The weight the method gives a single task, as text for the warning :meth:`bind` gives then:
        ``"1"``, unless the method scales the one gradient (Nash-MTL normalises it, for one)."""
        return "1"

    @abstractmethod
    def forward(
        self,
        losses: Tensor,
        *,
        representation: Tensor | None = None,
        parameters: Sequence[Tensor] | None = None,
    ) -> WeightedLoss:
        """Combine the losses using the gradients at ``representation`` or ``parameters``.

        The mixin passes the one that :attr:`route` names; evaluation steps pass neither.
        """


def weighted_sum(weights: Tensor, losses: Tensor) -> WeightedLoss:
    """``Σ wᵢ Lᵢ`` with the weights reported detached."""
    factors = weights if weights.dtype == losses.dtype else weights.to(losses.dtype)
    return WeightedLoss(torch.dot(factors, losses), weights.detach())
