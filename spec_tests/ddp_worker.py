"""Running pieces of the spec in W processes (ranks) of one gloo process group, on CPU.

``RankPool(impl, world_size, workdir)`` starts ``world_size`` fresh interpreters on its first
``run`` (multiprocessing ``spawn``: nothing of the parent's state is inherited; starting them costs
most of the distributed spec's time, torch and DDP's imports, so one pool serves a whole spec
module). Each rank sets the variables ``torchrun`` would set (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``), joins the group ONCE through the implementation's ``distributed.setup("cpu",
init_method="file://...")`` (a rendezvous file in ``workdir``: no port to find, nothing shared
between runs), then serves tasks: ``pool.run(task, payload)`` runs ``TASKS[task](impl, rank,
world_size, payload)`` (or the function a ``"module:function"`` task names) on every rank and returns the results in rank order. An error on a rank is
raised again in the parent: ``NotImplementedError`` as itself (a stub reads *not started*),
anything else as an ``AssertionError`` naming the rank. ``close()`` stops the ranks (they call
``distributed.teardown()``), and a rank whose parent is gone ends itself; a rank that is still busy ``HANG_GUARD_S`` seconds after another one
failed (``ANSWER_GUARD_S`` after another one answered) is stuck in a collective: the pool is killed,
the run fails naming the busy ranks, and the next ``run`` restarts it.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import queue
import shutil
import threading
import time
import traceback
from pathlib import Path

import torch

from .support import TwoParams, step_clock

#: After one rank failed, how long the others may take to answer before the pool counts as hung.
HANG_GUARD_S = 60.0
#: After one rank answered, how long the others may take to answer before the pool counts as hung (a
#: rank that left the others waiting in a collective: rank 0's own work after the last one, the log
#: and the plot, takes seconds; a first matplotlib import may build its font cache).
ANSWER_GUARD_S = 300.0


def impl_spec(impl) -> str:
    """What a child passes to ``Implementation``: a directory as an absolute path, else the name."""
    return str(impl.root) if impl.root is not None and Path(impl.root).is_dir() else impl.spec


class RankPool:
    def __init__(self, impl, world_size: int, workdir):
        self.spec, self.world_size, self.workdir = impl_spec(impl), world_size, Path(workdir)
        self.procs, self.inboxes, self.outbox = [], [], None
        self.start_error = None         # a stub's NotImplementedError at setup: raised again, no restart
        self.starts = 0

    def run(self, task: str, payload=None) -> list:
        if self.start_error is not None:
            raise NotImplementedError(self.start_error)
        if not self.procs:
            self._start()
        for inbox in self.inboxes:
            inbox.put((task, payload))
        return self._collect()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.starts += 1
        rendezvous = self.workdir / f"rendezvous-{os.getpid()}-{self.starts}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.outbox = ctx.Queue()
        self.inboxes = [ctx.Queue() for _ in range(self.world_size)]
        self.procs = [ctx.Process(target=_child, daemon=True,
                                  args=(self.spec, rank, self.world_size, str(rendezvous), self.inboxes[rank],
                                        self.outbox)) for rank in range(self.world_size)]
        for p in self.procs:
            p.start()
        try:
            self._collect()             # every rank says it joined the group
        except NotImplementedError as err:
            self.start_error = str(err)
            raise

    def _collect(self) -> list:
        results, errors = {}, {}
        try:
            while len(results) + len(errors) < self.world_size:
                guard = HANG_GUARD_S if errors else ANSWER_GUARD_S if results else None
                try:
                    rank, status, value = self.outbox.get(timeout=guard)
                except queue.Empty:
                    break               # the others are stuck (in a collective the failed rank left)
                (results if status == "ok" else errors)[rank] = value
        except BaseException:
            self.close(kill=True)       # interrupted (pytest-timeout, Ctrl-C): nothing is left running
            raise
        if not errors and len(results) < self.world_size:
            self.close(kill=True)
            busy = sorted(set(range(self.world_size)) - set(results))
            raise AssertionError(f"rank(s) {busy} of {self.world_size} still busy {ANSWER_GUARD_S:.0f} s after rank(s) "
                                 f"{sorted(results)} answered: stuck in a collective that the others left (do all "
                                 f"ranks take the same steps and stop after the same one?)")
        if errors:
            if len(results) + len(errors) < self.world_size:
                self.close(kill=True)
            rank = min(errors)
            kind, message, trace = errors[rank]
            if all(e[0] == "NotImplementedError" for e in errors.values()):
                raise NotImplementedError(message)
            raise AssertionError(f"rank {rank} of {self.world_size} raised {kind}: {message}\n{trace[-3000:]}")
        return [results[rank] for rank in range(self.world_size)]

    def close(self, kill: bool = False) -> None:
        if not kill:
            for inbox in self.inboxes:
                inbox.put(None)
        for p in self.procs:
            p.join(timeout=0 if kill else HANG_GUARD_S)
            if p.is_alive():
                p.kill()
                p.join()
        self.procs, self.inboxes, self.outbox = [], [], None


def _watch_parent(parent: int) -> None:
    """End this rank when the parent is gone (killed without closing the pool, e.g. by a per-test
    time limit that ends the whole pytest): no rank is left waiting in a collective."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _child(spec: str, rank: int, world_size: int, rendezvous: str, inbox, outbox) -> None:
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)          # W ranks share the machine's cores
    distributed = None
    try:
        from spec_tests.impl import Implementation

        impl = Implementation(spec)
        distributed = impl.component("distributed")
        distributed.setup("cpu", init_method=f"file://{rendezvous}")
        outbox.put((rank, "ok", None))
        while (message := inbox.get()) is not None:
            task, payload = message
            try:
                outbox.put((rank, "ok", _task(task)(impl, rank, world_size, payload)))
            except Exception as err:  # noqa: BLE001 - every error goes back to the parent
                outbox.put((rank, "error", _describe(err)))
    except Exception as err:  # noqa: BLE001
        outbox.put((rank, "error", _describe(err)))
    finally:
        try:
            if distributed is not None:
                distributed.teardown()
        except NotImplementedError:
            pass
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _task(name: str):
    """``TASKS[name]``, or the function ``module:function`` names (a benchmark's own task)."""
    if ":" in name:
        import importlib

        module, function = name.split(":")
        return getattr(importlib.import_module(module), function)
    return TASKS[name]


def _describe(err: BaseException) -> tuple[str, str, str]:
    kind = "NotImplementedError" if isinstance(err, NotImplementedError) else type(err).__name__
    return kind, str(err).strip().split("\n")[0] or kind, traceback.format_exc()


# --- the tasks: (impl, rank, world_size, payload) -> a result that torch.save can write ----------

def _model(impl, cfg: dict, seed: int, dtype):
    model = impl.component("model")
    torch.manual_seed(seed)
    return model.TransformerLM(model.ModelConfig(**cfg)).to(dtype)


def task_steps(impl, rank, world_size, p):
    """``len(p["batches"])`` optimizer steps on a DDP model; each rank takes its shard of the global
    batch (``distributed.shard``) in ``p["accum"]`` micro-batches. A comm hook counts the gradient
    all-reduces of each step."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    distributed = impl.component("distributed")
    optim = impl.component("optim")
    model = _model(impl, p["model"], p["seed"], p["dtype"])
    ddp = distributed.wrap(model)
    calls = [0]

    def counting_hook(state, bucket):
        calls[0] += 1
        return default_hooks.allreduce_hook(None, bucket)

    ddp.register_comm_hook(None, counting_hook)
    opt = optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=0.0)
    losses, norms, reduces = [], [], []
    for x, y in p["batches"]:
        xs, ys = distributed.shard((x, y), rank, world_size)
        micro = list(zip(xs.chunk(p["accum"]), ys.chunk(p["accum"])))
        before = calls[0]
        loss, norm = distributed.train_step(ddp, opt, micro, p.get("grad_clip"))
        losses.append(loss)
        norms.append(norm)
        reduces.append(calls[0] - before)
    return {"weights": {k: v.detach().clone() for k, v in model.state_dict().items()}, "losses": losses,
            "norms": norms, "reduces": reduces}


def task_evaluate(impl, rank, world_size, p):
    """``distributed.evaluate`` on every rank; a forward hook counts the batches this rank ran."""
    distributed = impl.component("distributed")
    model = _model(impl, p["model"], p["seed"], torch.float32)
    forwards = [0]
    model.register_forward_hook(lambda *args: forwards.__setitem__(0, forwards[0] + 1))
    nats, count = distributed.evaluate(model, p["stream"], p["batch_size"], p["max_batches"])
    return {"nats": nats, "count": count, "forwards": forwards[0]}


def task_train(impl, rank, world_size, p):
    """``train.train`` runs in order (``p["runs"]``: kwargs of ``train`` plus ``config`` fields);
    ``p["tokenizer"]`` is a ``Tokenizer.to_dict()``; ``expect_error`` returns the
    ``(type, message)`` of the ValueError/TypeError it raises; ``{"copy": (src, dst)}`` copies a run directory on rank 0 (the others wait);
    ``progress`` shows the progress bar, ``no_tokenizer`` lets train() make its own tokenizer,
    ``step_clock`` runs it on ``support.step_clock()`` (0.75 s an optimizer step), ``sigint_after``
    (``{"rank": r, "steps": k}``) sends SIGINT to rank r after its k-th optimizer step. Each run returns
    what this rank printed (``print_fn``) and wrote to stderr, its tokens_per_s (result and records), or
    ``{"interrupted": {"step", "checkpoint"}}`` of the TrainingInterrupted it raised."""
    train = impl.component("train")
    tokenizer = impl.component("tokenizer").Tokenizer.from_dict(p["tokenizer"])
    out = []
    for run in p["runs"]:
        if "copy" in run:
            if rank == 0:
                shutil.copytree(*run["copy"])
            torch.distributed.barrier()
            out.append(None)
            continue
        config = train.TrainConfig(**run["config"])
        if run.get("expect_error"):
            try:
                train.train(config, p["model"], train_docs=p["train_docs"], val_docs=p["val_docs"],
                            tokenizer=tokenizer)
            except (ValueError, TypeError) as err:
                out.append({"error": (type(err).__name__, str(err))})
            else:
                out.append({"error": ("nothing", "train ran")})
            continue
        printed, stderr = [], io.StringIO()
        with contextlib.ExitStack() as stack:
            stack.enter_context(contextlib.redirect_stderr(stderr))
            if run.get("step_clock"):
                stack.enter_context(step_clock())
            if run.get("sigint_after") and rank == run["sigint_after"]["rank"]:
                stack.enter_context(_sigint_after(run["sigint_after"]["steps"]))
            try:
                result = train.train(config, p["model"], train_docs=p["train_docs"], val_docs=p["val_docs"],
                                     tokenizer=None if run.get("no_tokenizer") else tokenizer,
                                     resume=run.get("resume", False), stop_after=run.get("stop_after"),
                                     progress=run.get("progress", False), print_fn=printed.append)
            except train.TrainingInterrupted as err:     # a KeyboardInterrupt: the rank loop would not catch it
                out.append({"interrupted": {"step": getattr(err, "step", None),
                                            "checkpoint": str(getattr(err, "checkpoint", None))}})
                continue
        out.append({"weights": {k: v.detach().clone() for k, v in result.model.state_dict().items()},
                    "val_loss": result.val_loss, "step": result.step, "printed": printed,
                    "stderr": stderr.getvalue(), "tokens_per_s": result.tokens_per_s,
                    "history": [{k: r[k] for k in ("step", "tokens_per_s") if k in r} for r in result.history]})
    return out


@contextlib.contextmanager
def _sigint_after(steps: int):
    """SIGINT to this process right after its ``steps``-th optimizer step (as a scheduler preempting one
    rank would send it)."""
    import signal

    from torch.optim.optimizer import register_optimizer_step_post_hook
    count = [0]

    def hook(*args):
        count[0] += 1
        if count[0] == steps:
            signal.raise_signal(signal.SIGINT)

    handle = register_optimizer_step_post_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def task_unused_parameter(impl, rank, world_size, p):
    """Two ``distributed.train_step`` calls on a DDP model built with ``find_unused_parameters=True``
    (SGD with momentum): the first gives both parameters a gradient, the second only ``a``. Returns
    ``b`` after each step and whether ``b.grad`` is None after the second."""
    from torch.nn.parallel import DistributedDataParallel

    distributed = impl.component("distributed")
    model = TwoParams()
    ddp = DistributedDataParallel(model, find_unused_parameters=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    on, off = TwoParams.inputs()
    distributed.train_step(ddp, opt, [(on, None)])
    b_first, a_first = model.b.detach().clone(), model.a.detach().clone()
    distributed.train_step(ddp, opt, [(off, None)])
    return {"a": (a_first, model.a.detach().clone()), "b": (b_first, model.b.detach().clone()),
            "b_grad_is_none": model.b.grad is None}


TASKS = {"steps": task_steps, "evaluate": task_evaluate, "train": task_train,
         "unused_parameter": task_unused_parameter}
