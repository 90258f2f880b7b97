r"""Per-task gradients and their Gramian, for the gradient-level strategies.

Two routes, chosen by the strategy's ``route``:

- ``"representation"``: the gradients of each task loss with respect to the shared
  representation :math:`z` that ``forward`` marks with ``z = self.shared_representation(z)``,
  through the heads only (together about one backward pass through the heads). Where each head
  is its own (no operation above :math:`z` serves two tasks), one backward through all the heads
  takes them, a hook on each node that reads :math:`z` catching its task's gradient there before
  the tasks' are summed; otherwise one ``torch.autograd.grad`` per task.
  :math:`G_{ij} = \sum_s \langle \partial L_i/\partial z_s, \partial L_j/\partial z_s\rangle` over
  the samples :math:`s` of the batch.
- ``"parameters"``: the rows of the Jacobian :math:`J` are :math:`\partial L_i/\partial\theta` over
  the shared parameters :math:`\theta` (about K times the cost of a backward pass through the
  trunk, and a K×P matrix in memory); :math:`G = J J^\top`.

How the K rows are taken (:func:`set_jacobian_mode`):

- ``"loop"`` (the default): one ``torch.autograd.grad`` per task, each through its own head and
  the trunk. Peak extra memory: the K×P Jacobian plus one backward pass's activation gradients.
- ``"batched"``: one vectorised backward (``is_grads_batched=True``) of the K losses with the
  identity as K stacked output gradients: one call instead of K, but it holds K backward
  passes' activation gradients at once (and the K×P result twice while it is flattened), and
  every head backpropagates all K rows (K−1 of them zero). Where an operation cannot be batched
  (no batching rule, an in-place update or ``.item()`` in a custom backward) the step falls back
  to the loop, warns once and keeps the loop from then on.

  Measured on CPU (one thread, batch 64, a conv trunk, K linear heads; ``benchmarks/peers.py``),
  the loop is the faster one: PyTorch's batching rule for the convolution and pooling backward
  runs the K rows one after another and then concatenates them, so the batched call does the
  same arithmetic as the loop plus copies (1.5× its time at K = 8, 1.8× at K = 40) and needs
  2.6× (K = 8) to 5.6× (K = 40) its peak memory. Batching can only win where the loop's cost is
  the K calls themselves (small models on a GPU, where each call is a train of kernel launches):
  run ``benchmarks/peers.py --device cuda`` to see.

The representation route does not batch its rows: a batched call would send all K rows through
every head (K² head passes instead of K) and measured 10× slower at K = 40 with linear heads.
One backward through the heads with a hook per task does K head passes in one engine run
(about 35 µs of fixed cost each saved on that CPU: 0–12% of a step at K = 40).

The parameter route reuses its Jacobian for the update (``reuse_jacobian=True`` in
:meth:`~lightning_multiloss.MultiTaskMixin.configure_multitask`, the default). The K per-task
passes already hold everything the backward of :math:`\sum_i w_i L_i` would compute: the shared
parameters' gradient is :math:`J^\top w`, and a parameter :math:`\phi` that only task i uses (its
head) gets :math:`w_i\,\partial L_i/\partial\phi`, which the same pass takes with little more work.
So the step returns a loss with the value :math:`\sum_i w_i L_i` whose backward hands each
parameter that known gradient (times the incoming one, so that Lightning's division for
gradient accumulation, clipping after it and DDP's all-reduce act as on any loss), without a pass
through the model: K backward passes in all, as the LibMTL way takes, instead of K + 1.
Lightning's own backward of :math:`\sum_i w_i L_i` through the model stays where the Jacobian
cannot give the update:

- under float16 mixed precision (a GradScaler): the per-task passes run on unscaled losses, so
  the update must come from the scaled backward, which guards it against underflow;
- where a trainable parameter outside ``shared_parameters()`` serves two or more tasks (shared
  parameters chosen as a subset of the trunk, e.g. its last layer): its gradient would need the
  per-task gradients of the whole trunk;
- with ``reuse_jacobian=False``: for code that hooks into the backward (tensor or module hooks)
  or a loss whose graph reaches leaf tensors that are not the module's parameters (they get no
  gradient from the task losses otherwise).

The representation route reuses its passes the same way: each task's pass through its head also
takes the gradients of the head's own parameters, and the returned loss hands
:math:`\sum_i w_i\,\partial L_i/\partial z` to the representation, from where the backward goes on
through the trunk alone, and :math:`w_i\,\partial L_i/\partial\phi` to task i's head: one pass
through each head and one through the trunk, as the summed loss takes, instead of two through each
head. Which parameters are each head's is read from the autograd graph
(:func:`own_above_representation`); Lightning's backward through the whole model stays where a
layer above the representation serves two heads, where a head reads a trunk parameter (tied
weights) or a leaf tensor that is not a parameter, under float16 mixed precision and with
``reuse_jacobian=False``.

Which task uses which parameter is found by autograd once, on the first step. Measured on CPU
(``benchmarks/peers.py``, a conv trunk) the route then costs what the LibMTL way's K
``backward`` calls cost (1.00–1.08× in the latest runs, 0.88–1.36× over earlier ones: the same
passes, different bookkeeping) and 0.39–0.67× of torchjd's ``mtl_backward`` at K = 8,
0.23–0.39× at K = 40.

Under DDP, with each process's task losses a mean over its B samples and DDP averaging the
gradients over N processes, the global-batch gradient of task i on one sample is 1/N times the
local one, so:

- representation, ``ddp="exact"``: :math:`G = \frac{1}{N^2}\sum_r G_r` (one K×K all-reduce);
- parameters, ``ddp="exact"``: :math:`J = \frac{1}{N}\sum_r J_r` (a K×P all-reduce), then
  :math:`G = J J^\top`;
- ``ddp="local"``: each process's own :math:`G_r` (no communication; the weights differ between
  processes).

The losses handed to the strategy are the global means in exact mode. Then every process computes
the same weights, and the DDP-averaged gradient of :math:`\sum_i w_i L_i^{(r)}` equals the
gradient of the single-process run on the global batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lightning_multiloss._dist import all_reduce_sum, is_distributed
from lightning_multiloss.errors import MultiLossError, first_line

_GradientEdge: Any
try:  # differentiating one input of a stack
    from torch.autograd.graph import GradientEdge as _GradientEdge
except ImportError:  # pragma: no cover - old torch: differentiate losses[i] (slower, same values)
    _GradientEdge = None

_P = TypeVar("_P", bound=Tensor)  # a parameter, or any tensor
Route = Literal["parameters", "representation"]
DDPMode = Literal["exact", "local"]
JacobianMode = Literal["loop", "batched"]

_jacobian_mode: JacobianMode = "loop"
_batching_failure: str | None = None
"""Why the batched Jacobian failed once (then the loop is used from there on), or ``None``."""


def world_size() -> int:
    """The number of processes (1 without distributed training)."""
    return dist.get_world_size() if is_distributed() else 1


def task_grads(
    losses: Tensor, inputs: Sequence[Tensor], task_inputs: Sequence[Sequence[Tensor]] | None = None
) -> Iterator[tuple[Tensor | None, ...]]:
    """For each task, ``torch.autograd.grad(loss_i, inputs + task_inputs[i])`` (``None`` where unused), graph kept.

    ``losses`` is usually ``torch.stack`` of the task losses: differentiating ``losses[i]`` would
    run back through the stack into every task's graph (all heads, with zero gradients), so the
    stack's inputs are differentiated instead, each through its own task's graph only.
    """
    outputs: list[Any] = list(losses.unbind())
    if _GradientEdge is not None and _is_stack_of(losses):
        assert losses.grad_fn is not None
        outputs = [None if node is None else _GradientEdge(node, nr) for node, nr in losses.grad_fn.next_functions]
    one = torch.ones((), dtype=losses.dtype, device=losses.device)
    extra = task_inputs if task_inputs is not None else [()] * len(outputs)
    for output, own in zip(outputs, extra, strict=True):
        wanted = [*inputs, *own]
        if output is None:  # a constant loss
            yield (None,) * len(wanted)
        else:
            yield torch.autograd.grad(output, wanted, grad_outputs=one, retain_graph=True, allow_unused=True)


def representation_gradients(losses: Tensor, representation: Tensor, strategy: str = "") -> Tensor:
    """``(K, *z.shape)``: the gradient of each task loss with respect to ``representation``.

    A task whose loss does not depend on ``representation`` gets a zero row. The graph is kept
    (Lightning's backward follows); nothing is accumulated into ``.grad``.
    """
    return _representation_rows(losses, representation, None, strategy)[0]


def _representation_rows(
    losses: Tensor, representation: Tensor, task_parameters: Sequence[Sequence[Tensor]] | None, strategy: str
) -> tuple[Tensor, list[list[Tensor | None]]]:
    """The ``(K, *z.shape)`` gradients at ``representation`` and, from the same K passes, each
    task's gradients with respect to its own ``task_parameters[i]``."""
    if not representation.requires_grad:
        raise MultiLossError(
            f"weighting {strategy!r}: the shared representation does not require grad; "
            "mark a tensor computed from trainable layers with z = self.shared_representation(z). A frozen "
            "trunk (BackboneFinetuning's first epochs) makes it a constant, which leaves a gradient strategy "
            "nothing to compare: keep a layer below z trainable, or train the heads first with a loss-level strategy"
        )
    rows: list[Tensor | None] = []
    task_gradients: list[list[Tensor | None]] = []
    in_one_pass = None
    if task_parameters is not None and _is_stack_of(losses):
        in_one_pass = _rows_in_one_pass(losses, representation, task_parameters)
    if in_one_pass is not None:
        rows, task_gradients = in_one_pass
    else:
        for grad, *own in task_grads(losses, [representation], task_parameters):
            rows.append(grad)
            task_gradients.append(own)
    if all(row is None for row in rows):
        raise MultiLossError(
            f"weighting {strategy!r}: no task loss depends on the marked shared representation; mark the "
            "tensor the heads read in this forward, with z = self.shared_representation(z)"
        )
    stacked = torch.stack([torch.zeros_like(representation) if row is None else row for row in rows])
    return stacked, task_gradients


def _is_stack_of(losses: Tensor) -> bool:
    """Whether ``losses`` is ``torch.stack`` of the task losses (one graph edge per task)."""
    grad_fn = losses.grad_fn
    return (
        grad_fn is not None
        and type(grad_fn).__name__ == "StackBackward0"
        and len(grad_fn.next_functions) == losses.numel()
    )


def _rows_in_one_pass(
    losses: Tensor, representation: Tensor, task_parameters: Sequence[Sequence[Tensor]]
) -> tuple[list[Tensor | None], list[list[Tensor | None]]] | None:
    """:func:`_representation_rows`'s K passes as one backward through the heads, or ``None``
    where a graph node above the representation serves two tasks.

    Each node that reads the representation then belongs to one task, and a hook on it catches
    that task's gradient at the representation before the engine sums the tasks' there. One
    engine run instead of K, the same arithmetic.
    """
    if losses.grad_fn is None or representation.grad_fn is None:
        return None
    readers = _readers_by_task(losses.grad_fn, (representation.grad_fn, representation.output_nr))
    if readers is None:
        return None
    rows: list[Tensor | None] = [None] * losses.numel()

    def catch(task: int, index: int) -> Callable[[Sequence[Tensor | None], Sequence[Tensor | None]], None]:
        def hook(grad_inputs: Sequence[Tensor | None], grad_outputs: Sequence[Tensor | None]) -> None:
            grad = grad_inputs[index]
            if grad is not None:
                row = rows[task]
                rows[task] = grad if row is None else row + grad

        return hook

    handles = []
    try:
        for task, found in enumerate(readers):
            handles += [node.register_hook(catch(task, index)) for node, index in found]
        own = [p for task in task_parameters for p in task]
        ones = torch.ones_like(losses)
        grads = torch.autograd.grad(losses, [representation, *own], ones, retain_graph=True, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    rest = iter(grads[1:])
    return rows, [[next(rest) for _ in task] for task in task_parameters]


def _readers_by_task(stack_node: Any, edge: tuple[Any, int]) -> list[list[tuple[Any, int]]] | None:
    """Per task (an input of the losses' stack), the ``(node, input index)`` pairs above ``edge``
    (a tensor's ``(grad_fn, output_nr)``) whose input is that edge; ``None`` where two tasks reach
    one node above it (its gradient there would be theirs summed)."""
    readers: list[list[tuple[Any, int]]] = []
    reached: set[Any] = set()
    for task_edge in stack_node.next_functions:
        seen, found = _graph_above([task_edge], edge)
        if not reached.isdisjoint(seen):
            return None
        reached |= seen
        readers.append(found)
    return readers


def _graph_above(
    edges: Sequence[tuple[Any, int]], stop: tuple[Any, int] | None
) -> tuple[set[Any], list[tuple[Any, int]]]:
    """The graph nodes reached from ``edges`` without going through the edge ``stop`` (a tensor's
    ``(grad_fn, output_nr)``; ``None``: all of them), and the ``(node, input index)`` pairs whose
    input is ``stop``."""
    seen: set[Any] = set()
    readers: list[tuple[Any, int]] = []
    stack = [node for node, output_nr in edges if node is not None and (node, output_nr) != stop]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for index, (child, output_nr) in enumerate(node.next_functions):
            if child is None:
                continue
            if stop is not None and child is stop[0] and output_nr == stop[1]:
                readers.append((node, index))
            else:
                stack.append(child)
    return seen, readers


def set_jacobian_mode(mode: JacobianMode) -> None:
    """How :func:`parameter_gradients` takes the K rows of the Jacobian from now on (see the module docs).

    ``"loop"`` (the default): one backward pass per task; ``"batched"``: one vectorised backward
    pass for all K, falling back to the loop where an operation cannot be batched.
    """
    global _jacobian_mode
    if mode not in get_args(JacobianMode):
        raise MultiLossError(f"jacobian mode must be one of {list(get_args(JacobianMode))}, got {mode!r}")
    _jacobian_mode = mode


def jacobian_mode() -> JacobianMode:
    """The mode set by :func:`set_jacobian_mode` (``"loop"`` unless changed)."""
    return _jacobian_mode


def parameter_gradients(losses: Tensor, parameters: Sequence[Tensor], mode: JacobianMode | None = None) -> Tensor:
    """``(K, P)``: the Jacobian of the task losses with respect to ``parameters``, flattened, float32 or wider.

    ``mode``: ``"loop"`` or ``"batched"`` (default: :func:`jacobian_mode`); both give the same
    values to rounding. A parameter that a task does not use contributes zeros. The graph is kept
    (Lightning's backward follows); nothing is accumulated into ``.grad``.
    """
    return jacobian_and_task_gradients(losses, parameters, None, mode)[0]


def jacobian_and_task_gradients(
    losses: Tensor,
    parameters: Sequence[Tensor],
    task_parameters: Sequence[Sequence[Tensor]] | None,
    mode: JacobianMode | None = None,
) -> tuple[Tensor, list[list[Tensor | None]]]:
    """The ``(K, P)`` Jacobian over ``parameters`` and, from the same backward passes, each task's
    gradients with respect to its own ``task_parameters[i]`` (``None`` where unused; an empty list
    per task when ``task_parameters`` is ``None``).
    """
    chosen = _jacobian_mode if mode is None else mode
    if chosen == "batched" and _batching_failure is None:
        try:
            return _batched_jacobian(losses, parameters, task_parameters)
        except RuntimeError as error:
            result = _looped_jacobian(losses, parameters, task_parameters)  # an error not batching's is raised here
            _remember_batching_failure(error)
            return result
    return _looped_jacobian(losses, parameters, task_parameters)


def _jacobian_dtype(parameters: Sequence[Tensor]) -> torch.dtype:
    return torch.promote_types(parameters[0].dtype, torch.float32)


def _looped_jacobian(
    losses: Tensor, parameters: Sequence[Tensor], task_parameters: Sequence[Sequence[Tensor]] | None
) -> tuple[Tensor, list[list[Tensor | None]]]:
    """One ``autograd.grad`` per task, each row written in place (one concatenation per task)."""
    sizes = [p.numel() for p in parameters]
    shared = len(parameters)
    own = task_parameters if task_parameters is not None else [()] * losses.numel()
    jacobian = torch.empty(losses.numel(), sum(sizes), dtype=_jacobian_dtype(parameters), device=parameters[0].device)
    task_gradients: list[list[Tensor | None]] = []
    for row, grads in zip(jacobian, task_grads(losses, parameters, own), strict=True):
        task_gradients.append(list(grads[shared:]))
        grads = grads[:shared]
        if all(g is not None for g in grads):
            torch.cat([g.reshape(-1) for g in grads if g is not None], out=row)
            continue
        for piece, g in zip(row.split(sizes), grads, strict=True):
            if g is None:
                piece.zero_()
            else:
                piece.copy_(g.reshape(-1))
    return jacobian, task_gradients


def _batched_jacobian(
    losses: Tensor, parameters: Sequence[Tensor], task_parameters: Sequence[Sequence[Tensor]] | None
) -> tuple[Tensor, list[list[Tensor | None]]]:
    """One vectorised ``autograd.grad`` with the identity as the K output gradients."""
    k = losses.numel()
    dtype = _jacobian_dtype(parameters)
    device = parameters[0].device
    own = [list(p) for p in task_parameters] if task_parameters is not None else [[] for _ in range(k)]
    if losses.grad_fn is None:  # every loss is a constant
        return torch.zeros(k, sum(p.numel() for p in parameters), dtype=dtype, device=device), [
            [None] * len(p) for p in own
        ]
    identity = torch.eye(k, dtype=losses.dtype, device=losses.device)
    extra = list({id(p): p for task in own for p in task}.values())  # each once: tasks may ask for the same
    grads = torch.autograd.grad(
        losses,
        [*parameters, *extra],
        grad_outputs=identity,
        retain_graph=True,
        allow_unused=True,
        is_grads_batched=True,
    )
    jacobian = torch.cat(
        [
            torch.zeros(k, p.numel(), dtype=dtype, device=device) if g is None else g.reshape(k, -1).to(dtype)
            for p, g in zip(parameters, grads[: len(parameters)], strict=True)
        ],
        dim=1,
    )
    by_id = {id(p): g for p, g in zip(extra, grads[len(parameters) :], strict=True)}
    task_gradients = [[None if by_id[id(p)] is None else by_id[id(p)][i] for p in task] for i, task in enumerate(own)]
    return jacobian, task_gradients


def _remember_batching_failure(error: RuntimeError) -> None:
    global _batching_failure
    _batching_failure = first_line(error)
    warnings.warn(
        f"the batched Jacobian of the parameter route failed ({_batching_failure}); "
        "using one backward pass per task from now on",
        RuntimeWarning,
        stacklevel=3,
    )


def gramian_of(rows: Tensor) -> Tensor:
    """``rows rowsᵀ`` over the flattened rows, in float32 or wider, also under mixed precision.

    The training step runs under autocast, which would take the product in bfloat16 or float16:
    a Gramian of about three significant digits (or one that overflows), and weights returned in
    that dtype. For the same reason the product is a full float32 one where
    ``torch.set_float32_matmul_precision("high")`` (TF32, as Lightning suggests on recent GPUs) or
    ``"medium"`` is set: with their 10 or 7 bits the Gramian of two parallel gradients has "zero"
    eigenvalues of 1e-3 of the largest, and IMTL-G and Aligned-MTL would count them as rank.
    """
    flat = rows.reshape(rows.shape[0], -1)
    flat = flat.to(torch.promote_types(flat.dtype, torch.float32))
    with torch.autocast(flat.device.type, enabled=False), _full_float32_matmul():
        return flat @ flat.T


@contextmanager
def _full_float32_matmul() -> Iterator[None]:
    """``torch.set_float32_matmul_precision("highest")`` inside, the setting before it restored."""
    previous = torch.get_float32_matmul_precision()
    if previous == "highest":
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


@dataclass(frozen=True)
class SharedGradients:
    """What a route takes in one step (:func:`parameter_route_gradients`,
    :func:`representation_route_gradients`)."""

    jacobian: Tensor
    """``(K, P)``: the Jacobian of the task losses over the shared tensors (the shared parameters,
    or the representation), flattened; on the parameter route in exact DDP mode, the global batch's."""
    gramian: Tensor
    """``J Jᵀ``, ``(K, K)``."""
    losses: Tensor
    """The ``(K,)`` detached losses to weight from (global means in exact DDP mode)."""
    task_gradients: list[list[Tensor | None]]
    """Per task, its gradients with respect to its own parameters (this process's batch)."""


def parameter_route_gradients(
    losses: Tensor,
    *,
    ddp: DDPMode,
    parameters: Sequence[Tensor] | None,
    task_parameters: Sequence[Sequence[Tensor]] | None = None,
    strategy: str = "",
) -> SharedGradients:
    """The Jacobian over the shared ``parameters``, its Gramian and the losses, and (when
    ``task_parameters`` is given) each task's gradients with respect to its own parameters, from
    the same K backward passes.
    """
    if not parameters:
        raise MultiLossError(
            f"weighting {strategy!r} uses route='parameters' but there are no shared parameters: "
            "override shared_parameters() to return them"
        )
    jacobian, task_gradients = jacobian_and_task_gradients(losses, parameters, task_parameters)
    detached = losses.detach()
    n = world_size()
    if ddp == "exact" and n > 1:
        dist.all_reduce(jacobian, op=dist.ReduceOp.SUM)  # in place: the K×P matrix is ours
        jacobian /= n
        detached = all_reduce_sum(detached) / n
    return SharedGradients(jacobian, gramian_of(jacobian), detached, task_gradients)


def representation_route_gradients(
    losses: Tensor,
    *,
    ddp: DDPMode,
    representation: Tensor | None,
    task_parameters: Sequence[Sequence[Tensor]] | None = None,
    strategy: str = "",
) -> SharedGradients:
    """The gradients of the task losses at the shared ``representation``, their Gramian and the
    losses (the global batch's in exact DDP mode) and (when ``task_parameters`` is given) each
    task's gradients with respect to its own parameters, from the same K passes through the heads.

    The rows stay this process's: the update they give (``Σ wᵢ ∂Lᵢ/∂z`` into the trunk) is
    averaged over processes by DDP like any gradient.
    """
    if representation is None:
        raise MultiLossError(
            f"weighting {strategy!r} uses route='representation': mark the shared representation in "
            "forward with `z = self.shared_representation(z)` (the tensor the task heads read)"
        )
    rows, task_gradients = _representation_rows(losses, representation, task_parameters, strategy)
    flat = rows.reshape(rows.shape[0], -1)
    gramian = gramian_of(flat)
    detached = losses.detach()
    n = world_size()
    if ddp == "exact" and n > 1:
        gramian = all_reduce_sum(gramian) / (n * n)
        detached = all_reduce_sum(detached) / n
    return SharedGradients(flat, gramian, detached, task_gradients)


class _GivenGradient(torch.autograd.Function):
    """``value`` in the forward; in the backward, the gradients of ``Σ wᵢLᵢ`` that the per-task
    passes already took, times the incoming gradient, on the shared tensors and the tasks' own
    parameters.

    The weighted sums are formed in the backward: the incoming gradient (Lightning's scaling
    for accumulation) folds into the K weights first, so each gradient is written once.
    """

    @staticmethod
    def forward(ctx: Any, value: Tensor, given: _Given, *targets: Tensor) -> Tensor:
        ctx.given = given
        return value.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        given: _Given | None = ctx.given
        if given is None:
            raise MultiLossError(
                "the loss a gradient strategy returns carries gradients taken for one backward: "
                "it cannot be backpropagated twice (its Jacobian is freed by the first)"
            )
        ctx.given = None  # the Jacobian is freed by this backward, not kept with the graph
        scaled = given.weights * grad_output.to(given.weights.dtype)
        combined = scaled @ given.jacobian.to(scaled.dtype)  # bfloat16 rows (a representation): summed in float32
        shared = [
            piece.view_as(t) if piece.dtype == t.dtype else piece.view_as(t).to(t.dtype)
            for t, piece in zip(given.shared, combined.split(given.sizes), strict=True)
        ]
        own: Sequence[Tensor] = ()
        if given.own_gradients:
            by_task = scaled.to(given.own_gradients[0].dtype).unbind()
            own = torch._foreach_mul(given.own_gradients, [by_task[i] for i in given.own_tasks])
        return (None, None, *shared, *own)


@dataclass(frozen=True)
class _Given:
    """What :class:`_GivenGradient` hands out in the backward."""

    weights: Tensor  # (K,), in the Jacobian's dtype or float32, the wider
    jacobian: Tensor  # (K, P) over the shared tensors
    shared: Sequence[Tensor]
    sizes: list[int]
    own_gradients: list[Tensor]  # ∂Lᵢ/∂φ for each task's own parameter φ that its pass reached
    own_tasks: list[int]  # the task of each


def loss_with_combined_gradient(
    losses: Tensor,
    weights: Tensor,
    taken: SharedGradients,
    shared: Sequence[Tensor],
    task_parameters: Sequence[Sequence[Tensor]],
) -> Tensor:
    r"""A scalar equal to :math:`\sum_i w_i L_i` whose backward gives each parameter its part of
    :math:`\nabla \sum_i w_i L_i` from the gradients already taken, without another pass through
    the heads (and, on the parameter route, the trunk).

    ``shared``: the tensors the rows of ``taken.jacobian`` are over: the shared parameters, which
    get :math:`J^\top w`, or the shared representation :math:`z`, which gets
    :math:`\sum_i w_i\,\partial L_i/\partial z` and passes it on through the trunk. A task's own
    parameter :math:`\phi` gets :math:`w_i\,\partial L_i/\partial\phi`. The backward multiplies
    by the incoming gradient, so Lightning's scaling of the loss (gradient accumulation) applies as
    to any loss. The Jacobian is kept until that backward (it runs right after the step).
    """
    own_targets: list[Tensor] = []
    own_gradients: list[Tensor] = []
    own_tasks: list[int] = []
    for i, (own, grads) in enumerate(zip(task_parameters, taken.task_gradients, strict=True)):
        for p, g in zip(own, grads, strict=True):
            if g is not None:
                own_targets.append(p)
                own_gradients.append(g)
                own_tasks.append(i)
    given = _Given(
        # float32 or wider, as computed: the rows of a bfloat16 representation would round them.
        weights.detach().to(torch.promote_types(taken.jacobian.dtype, torch.float32)),
        taken.jacobian,
        shared,
        [t.numel() for t in shared],
        own_gradients,
        own_tasks,
    )
    value = torch.dot(weights.to(losses.dtype), losses.detach())
    result: Tensor = _GivenGradient.apply(value, given, *shared, *own_targets)
    return result


def own_above_representation(losses: Tensor, representation: Tensor, parameters: Sequence[_P]) -> list[list[_P]] | None:
    """Per task, the ``parameters`` its loss reaches without going through ``representation``
    (its head); ``None`` where the per-task passes at the representation cannot give the update.

    Read from the autograd graph (no backward pass). ``None`` where the losses are not one stack
    of the task losses, where two tasks reach a parameter (or any leaf tensor) other than through
    the representation (a layer above it that two heads share), where a task reaches a leaf tensor
    outside ``parameters`` that way (it would get no gradient), or where a parameter is reached
    both above and below the representation (tied weights): then the update needs Lightning's
    backward through the model.
    """
    grad_fn = losses.grad_fn
    node_of_z = representation.grad_fn
    if grad_fn is None or node_of_z is None or not _is_stack_of(losses):
        return None
    edge_of_z = (node_of_z, representation.output_nr)
    below = _leaves_reached(node_of_z.next_functions, stop=None)
    reached_by: dict[int, int] = {}  # leaf id -> the task that reaches it above the representation
    for task, edge in enumerate(grad_fn.next_functions):
        for leaf in _leaves_reached([edge], stop=edge_of_z):
            if reached_by.setdefault(leaf, task) != task or leaf in below:
                return None
    known = {id(p) for p in parameters}
    if not known.issuperset(reached_by):
        return None
    own: list[list[_P]] = [[] for _ in range(losses.numel())]
    for p in parameters:
        if id(p) in reached_by:
            own[reached_by[id(p)]].append(p)
    return own


def leaves_by_task(
    losses: Tensor, stop: Tensor | None = None, skip: Sequence[Tensor] = ()
) -> tuple[tuple[int, ...], ...]:
    """Per task (an input of the losses' stack), the sorted ids of the leaf tensors its loss reaches
    in this step's graph, not going through ``stop`` (the shared representation, where given) and
    leaving out those in ``skip``: which parameters each task uses now. One walk of the graph,
    each node once (under a microsecond a node); ``()`` where the losses are not one stack of the
    task losses.
    """
    grad_fn = losses.grad_fn
    if grad_fn is None or not _is_stack_of(losses):
        return ()
    stop_node, stop_nr = (None, -1) if stop is None else (stop.grad_fn, stop.output_nr)
    skipped = {id(t) for t in skip}
    below: dict[Any, frozenset[int]] = {}  # node -> the leaves reached from it
    children_of: dict[Any, list[Any]] = {}
    roots = [root for root, _ in grad_fn.next_functions]
    # It runs every training step, so it avoids work per node: each node's children are read once
    # (next_functions builds new tuples at each access) and a node with one child shares its set.
    for root in roots:
        pending = [root] if root is not None else []
        while pending:  # depth first, each node's children before it
            node = pending[-1]
            if node in below:
                pending.pop()
                continue
            children = children_of.get(node)
            if children is None:
                children = children_of[node] = [
                    child
                    for child, nr in node.next_functions
                    if child is not None and (child is not stop_node or nr != stop_nr)
                ]
                waiting = [child for child in children if child not in below]
                if waiting:
                    pending.extend(waiting)
                    continue
            pending.pop()
            leaf = getattr(node, "variable", None)
            if leaf is not None:
                found = _NO_LEAF if id(leaf) in skipped else frozenset((id(leaf),))
            elif len(children) == 1:
                found = below[children[0]]
            else:
                found = _NO_LEAF.union(*[below[child] for child in children])
            if type(node).__name__ == "CompiledFunctionBackward":
                # Every task reaches every parameter of a compiled graph: its class (one per
                # compilation) stands for what it computes, so that a recompiled graph is another.
                found = found | {id(type(node))}
            below[node] = found
    return tuple(tuple(sorted(below[root])) if root is not None else () for root in roots)


_NO_LEAF: frozenset[int] = frozenset()


def _leaves_reached(edges: Sequence[tuple[Any, int]], stop: tuple[Any, int] | None) -> set[int]:
    """The ids of the leaf tensors (``AccumulateGrad`` nodes) reached from ``edges``, not going
    through the edge ``stop`` (a tensor's ``(grad_fn, output_nr)``)."""
    seen, _ = _graph_above(edges, stop)
    return {id(leaf) for leaf in (getattr(node, "variable", None) for node in seen) if leaf is not None}


def parameter_users(
    losses: Tensor, parameters: Sequence[Tensor], outputs: Sequence[Any] | None = None
) -> list[list[int]]:
    """For each parameter, the tasks (indices into ``losses``) whose loss depends on it.

    Found by autograd (``allow_unused``): a parameter is used by a loss when it is in that loss's
    graph, even where its gradient happens to be zero. A ``torch.compile`` graph hides which of its
    parameters each output uses (its backward gives every parameter a gradient, zeros included), so
    through one, a parameter counts as used by a task where a gradient is not all zero (read once,
    on the first step): that of a random projection of the task's output (``outputs``, in task
    order), which depends on the parameters whether or not the batch has a label for the task (a
    task without one has a loss of ``0 * output.sum()``, whose gradient is zero everywhere), or,
    without ``outputs``, that of its loss.
    """
    users: list[list[int]] = [[] for _ in parameters]
    if not parameters:
        return users
    through_compiled = passes_through_compiled_graph(losses)
    probed = losses
    if through_compiled and outputs is not None:
        probed = torch.stack([_random_projection(output, losses) for output in outputs])
    for task, grads in enumerate(task_grads(probed, parameters)):
        present = [g for g in grads if g is not None]
        if through_compiled and present:
            nonzero = iter(torch.stack([g.ne(0).any() for g in present]).tolist())
            used = [g is not None and next(nonzero) for g in grads]
        else:
            used = [g is not None for g in grads]
        for i, is_used in enumerate(used):
            if is_used:
                users[i].append(task)
    return users


def _random_projection(output: Any, like: Tensor) -> Tensor:
    """A scalar (``like``'s device and dtype) that depends on every element of a task's output (a
    tensor, or a tuple, list or dict of them): their sum, each weighted by a seeded standard normal
    value (the same on every process)."""
    if isinstance(output, Tensor):
        if not output.is_floating_point() or not output.requires_grad:
            return like.new_zeros(())
        noise = torch.randn(output.shape, generator=torch.Generator().manual_seed(0), dtype=output.dtype)
        return (output * noise.to(output.device)).sum().to(like)
    items = output.values() if isinstance(output, Mapping) else output if isinstance(output, list | tuple) else ()
    return sum((_random_projection(item, like) for item in items), like.new_zeros(()))


def users_over_processes(users: Sequence[Sequence[int]], num_tasks: int, device: torch.device) -> list[list[int]]:
    """:func:`parameter_users` of every DDP process together: a parameter is used by a task where
    it is on any process (one all-reduce and one read; the identity without distributed training).

    A process whose batch leaves a task's loss constant (no labels) sees fewer users than the
    others: each choosing its shared parameters alone, the processes summed Jacobians over
    different parameters (gloo aborted on the sizes, or, alike in size, mixed them).
    """
    if not is_distributed():
        return [list(tasks) for tasks in users]
    used = torch.zeros(len(users), num_tasks, device=device)
    for row, tasks in zip(used, users, strict=True):
        row[list(tasks)] = 1.0
    dist.all_reduce(used, op=dist.ReduceOp.MAX)
    return [[task for task, flag in enumerate(row) if flag] for row in used.tolist()]


def shared_by_use(parameters: Sequence[_P], users: Sequence[Sequence[int]], num_tasks: int) -> list[_P]:
    """The parameters that at least two task losses use (every used one when there is a single task).

    ``users``: for each parameter, the tasks that use it (:func:`parameter_users`).
    """
    needed = min(2, num_tasks)
    return [p for p, tasks in zip(parameters, users, strict=True) if len(tasks) >= needed]


def own_by_task(parameters: Sequence[_P], users: Sequence[Sequence[int]], num_tasks: int) -> list[list[_P]] | None:
    """Per task, the parameters that only its loss uses; ``None`` where one serves two or more tasks.

    ``users``: for each parameter, the tasks that use it (:func:`parameter_users`); a parameter
    that no task uses is left out.
    """
    if any(len(tasks) > 1 for tasks in users):
        return None
    own: list[list[_P]] = [[] for _ in range(num_tasks)]
    for p, tasks in zip(parameters, users, strict=True):
        if tasks:
            own[tasks[0]].append(p)
    return own


def find_shared_parameters(losses: Tensor, named_parameters: Sequence[tuple[str, nn.Parameter]]) -> list[nn.Parameter]:
    """The trainable parameters that at least two of the task losses depend on (all of them for a single task).

    See :func:`parameter_users` for how use is found.
    """
    params = [p for _, p in named_parameters if p.requires_grad]
    return shared_by_use(params, parameter_users(losses, params), losses.numel())


def passes_through_compiled_graph(losses: Tensor) -> bool:
    """Whether the autograd graph of ``losses`` runs through a ``torch.compile`` graph."""
    seen: set[Any] = set()
    stack = [losses.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        if type(node).__name__ == "CompiledFunctionBackward":
            return True
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False
