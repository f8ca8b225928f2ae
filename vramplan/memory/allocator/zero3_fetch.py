"""DeepSpeed ZeRO-3 parameter fetch / release order at world size 1 with ``offload_param`` (CPU), no torch.

What the all-gather side stream allocates during Hugging Face Trainer steps 0, 1, 2 of a decoder trained with
non-reentrant gradient checkpointing (``gradient_checkpointing_use_reentrant = false`` in the run records), read
from DeepSpeed 0.19.8 (``runtime/zero/``; ``ppc`` = partitioned_param_coordinator.py, ``po`` =
parameter_offload.py, ``pp`` = partition_parameters.py, ``s3`` = stage3.py). ``coordinator_events`` re-runs the
coordinator's own state machine (trace modes, prefetch queue, reuse distance, inflight registry, active
sub-modules) over the hook calls the model's forward / backward makes, so every rule below is the code's:

* A fetch at world size 1 is ``NoGatherHandle`` / ``NoGatherCoalescedHandle`` (pp:61-120, chosen at pp:903-914
  and pp:1559): ``param.ds_tensor.data.to(cuda)``, one allocation of the parameter's bf16 bytes per parameter,
  in ds_id order within one gather (pp:910), made inside ``with stream(allgather_stream)`` (ppc:606): the
  all-gather stream. Every parameter's partition is on the CPU (zero.Init at load made them before persistence
  was marked, po:189, pp:1826-1836), so persistent (``ds_numel <= param_persistence_threshold``, po:317-335)
  parameters are copied too.
* A release is ``free_param`` (pp:314-330): ``record_stream(current)`` then drop ``param.data``; the block goes
  back only when nothing else references its storage. Under non-reentrant checkpointing the recomputation saves
  ``x.detach()`` of each saved tensor (torch/utils/checkpoint.py ``_recomputation_hook.pack_hook``), so a weight
  saved by a recomputed linear / RMSNorm keeps its block alive until that module's backward node ran, even after
  the coordinator released the parameter and fetched it again (a second block). Outside checkpointed blocks a
  saved leaf parameter is the Parameter itself (no extra reference). The history places such a free at
  ``free_completed``: after the compute stream passed the release point (record_stream), i.e. later than the
  release, by GPU timing.
* Trace modes (ppc:53-60, reset_step ppc:250-290, called by the root module's forward pre-hook po:303-308):
  step 0 runs in RECORD (INVALID -> RECORD): every fetch gathers only the module's own parameters, every
  release frees all of them, persistent ones included (ppc:498-499). Step 1's reset turns the recorded module
  order into the parameter trace (ppc:244-248) and runs COMPLETE from then on: prefetch and reuse distance.
* fetch_sub_module (ppc:306-490): gather the module's NOT_AVAILABLE params; wait; in COMPLETE pop them off the
  queue (ppc:418-435); then prefetch: pop queue entries while the numel *being gathered* is below
  ``min(max_live - n_available, prefetch_bucket)`` (ppc:452-476): entries whose parameter is already
  available or in flight are popped for free, and every popped entry pushes that parameter's
  ``most_recent_step_id_param_fetched_for`` to its future use (ppc:470-472).
* release_sub_module (ppc:492-533) in COMPLETE frees ``__params_to_release`` (ppc:632-664, lru-cached per
  (module, step id) for the whole run): the module's non-persistent params, minus those whose queue entry for a
  later use was popped already, minus those used again within ``max_reuse_distance`` numel of trace
  (``__submodule_order[step_id:]``, every module's params counted each time it appears). A param is only
  partitioned when AVAILABLE and no other sub-module holds it (ppc:622-630).
* Hooks (po:337-528): pre-forward fetch / post-forward release on every module; pre-backward fetch when grad
  reaches a module's output, post-backward release when grads of all its grad-requiring inputs are done (never
  for modules fed input_ids: root, model, embed_tokens). Non-reentrant recomputation re-runs a decoder layer's
  forward hooks at its first saved-tensor unpack (down_proj's backward) and stops early (checkpoint.py
  ``early_stop``, default True) inside the last saving op: down_proj's, mlp's and the layer's post-forward hooks
  do not run in it.
* Step end: ``backward_epilogue`` releases modules whose post-backward never fired (s3:3068, ppc:552-566:
  embed_tokens), the optimizer step releases everything (s3:2878, po:238-245, ppc:535-550: persistent params
  too) and ``_post_step`` re-gathers the persistent params on the compute stream (s3:2834-2841), so from step 1
  on they are never fetched on the all-gather stream. The next forward's reset_step releases what is still in
  flight (ppc:189-193, ppc:256).

Defaults: stage3_max_live_parameters = stage3_max_reuse_distance = 1e9 (zero/config.py:245-255); HF fills
prefetch_bucket_size = 0.9 h^2 and param_persistence_threshold = 10 h.

Not modelled: set-iteration order of frees within one module (here: ds_id order), nvme, quantized weights,
z3 leaf modules. Over more ranks (world > 1, fake-rank histories of 2026-12-04) a fetch is an all-gather into new
buffers: _gather's docstring and the coordinator's; the decisions are the same at every world size above 1, the
bytes differ (Event.recipe, sized_for).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import OrderedDict, defaultdict, deque
from functools import lru_cache
from typing import NamedTuple

from .zero3_modules import Z3Model, decoder_modules, step_hooks

BF16_BYTES = 2
MAX_LIVE_PARAMETERS = 10**9  # zero/config.py:245 stage3_max_live_parameters default
MAX_REUSE_DISTANCE = 10**9  # zero/config.py:251 stage3_max_reuse_distance default

ALLGATHER, DEFAULT = 1, 0  # the all-gather side stream / the compute stream


# ---------------------------------------------------------------------------------------------- coordinator
class Event(NamedTuple):
    """("fetch", param, nbytes, block, stream) or ("release", param, nbytes, block, stream): a block allocated
    for a parameter's gathered data / that block's last reference dropped (free requested; with record_stream the
    allocator returns it to the stream's pool when the compute stream passed this point). ``where``: the hook;
    ``recipe``: the block's bytes as ((numel, itemsize, WHOLE | PADDED | PARTITION), ...) summed, so that one run of
    the coordinator serves every world size above 1 (sized_for)."""

    kind: str
    param: str
    nbytes: int
    block: int
    stream: int
    where: str = ""
    recipe: tuple = ()


WHOLE, PADDED, PARTITION = 0, 1, 2


def recipe_bytes(recipe: tuple, world: int) -> int:
    """A block's bytes at `world` ranks: a whole parameter, its all-gather buffer (the partition rounded up to whole
    elements on every rank) or rank 0's partition, per (numel, itemsize, kind)."""
    total = 0
    for n, k, kind in recipe:
        part = -(-n // world)
        total += (n if kind == WHOLE else part * world if kind == PADDED else part) * k
    return total


def sized_for(events: list[Event], world: int) -> list[Event]:
    """`events` with each block's bytes at `world` ranks (the coordinator's decisions count elements, not bytes, and
    are the same at every world size above 1)."""
    return [e._replace(nbytes=recipe_bytes(e.recipe, world)) if e.recipe else e for e in events]


NA, INFLIGHT, AVAIL = 0, 1, 2
RECORD, COMPLETE, INVALID = 1, 2, 3


class _Coordinator:
    """PartitionedParameterCoordinator (ppc:73), with the parameter states it drives: at world size 1 with offloaded
    parameters (module docstring), or over `world` ranks, where a fetch is an all-gather into new buffers (_gather;
    `offloaded`: each partition staged on the GPU first), PEFT's lora_A read by its wrapper an external parameter
    (access) and a recomputation's frozen weights held by the module in backward (pre, release)."""

    def __init__(self, model: Z3Model, prefetch_bucket: int, persistence_threshold: int,
                 max_live: int = MAX_LIVE_PARAMETERS, max_reuse: int = MAX_REUSE_DISTANCE, world: int = 1,
                 offloaded: bool = False):
        self.model, self.bucket, self.max_live, self.max_reuse = model, prefetch_bucket, max_live, max_reuse
        self.world = world
        #: over more ranks with offloaded parameters each all-gather's input is the partition copied to the GPU first
        self.staged = offloaded and world > 1
        self.numel = model.param_numel
        self.itemsize = {p: model.param_itemsize.get(p, BF16_BYTES) for p in self.numel}
        self.ds_id = {p: k for k, p in enumerate(self.numel)}
        self.persist = {p for p, n in self.numel.items() if n <= persistence_threshold}  # po:317-335
        self.frozen = model.frozen
        self.recompute_params: dict[str, set] = defaultdict(set)  # ds_recompute_parameters of a backward module
        self.mparams = {name: sorted({p for p, _ in m.params}, key=self.ds_id.get)
                        for name, m in model.modules.items()}
        self.status = dict.fromkeys(self.numel, NA)
        self.active = {p: set() for p in self.numel}
        self.data: dict[str, int | None] = dict.fromkeys(self.numel)  # the block param.data is
        self.refs: dict[int, int] = {}  # block -> references (param.data, recompute saved tensors)
        self.block_param: dict[int, str] = {}
        self.block_recipe: dict[int, tuple] = {}
        self.flat: dict[int, list] = {}  # a coalesced all-gather's handle -> [its flat buffers' blocks, params not waited]
        self.held: dict[str, list[int]] = defaultdict(list)  # module -> blocks its recomputation saved
        self.registry: OrderedDict[str, int] = OrderedDict()  # inflight param -> handle
        self.handles: dict[int, list[str]] = {}
        self.mode = INVALID  # ppc:108
        self.step_id = 0
        self.submodule_order: list[str] = []
        self.param_order: list[tuple[str, int]] = []
        self.fetched_for: dict[str, deque] = defaultdict(deque)
        self.most_recent: dict[str, int] = defaultdict(lambda: int(-1e10))
        self.queue: deque | None = None
        self.n_available = 0
        self.release_cache: dict[tuple[str, int], set] = {}  # lru_cache on __params_to_release (ppc:633)
        #: the trace's reuse index (_reuse_index) and the version of submodule_order / mparams it was built for
        self._trace_version, self._index_version = 0, -1
        self._index: tuple[list[int], dict[str, list[int]]] = ([0], {})
        self.active_bwd: OrderedDict[str, None] = OrderedDict()
        self.events: list[Event] = []
        self.where = ""
        self.invalidations = 0
        self._next_block = 0

    # -- memory
    def _new_block(self, p: str, recipe: tuple, stream: int) -> int:
        b = self._next_block
        self._next_block += 1
        nbytes = recipe_bytes(recipe, self.world)
        self.refs[b], self.block_param[b], self.block_recipe[b] = 1, p, recipe
        self.events.append(Event("fetch", p, nbytes, b, stream, self.where, recipe))
        return b

    def _alloc(self, p: str, stream: int = ALLGATHER, padded: bool = False) -> None:
        """param.data's new block: the parameter's bf16 bytes, or (`padded`) its all-gather buffer's, the partition
        rounded up to whole elements on every rank (pp:1388 _all_gather_sequential, pp:2052)."""
        self.data[p] = self._new_block(p, ((self.numel[p], self.itemsize[p], PADDED if padded else WHOLE),), stream)

    def _unref(self, b: int) -> None:
        self.refs[b] -= 1
        if self.refs[b] == 0:
            p = self.block_param[b]
            recipe = self.block_recipe[b]
            self.events.append(Event("release", p, recipe_bytes(recipe, self.world), b, -1, self.where, recipe))

    def hold(self, module: str) -> None:
        for p in self.mparams[module]:  # weight and bias: the Qwen2 histories free q/k/v biases at the backward too
            b = self.data[p]
            if b is not None:
                self.refs[b] += 1
                self.held[module].append(b)

    def unhold(self, module: str) -> None:
        for b in self.held.pop(module, []):
            self._unref(b)

    # -- ppc
    def _gather(self, params) -> None:  # __all_gather_params_ ppc:582-613, handle pp:903-914
        part = sorted((p for p in params if self.status[p] == NA), key=self.ds_id.get)
        if not part:
            return
        self.n_available += sum(self.numel[p] for p in part)
        h = len(self.handles)
        if self.world > 1 and len(part) > 1:  # pp:1446-1470: per dtype (sort_dtypes: by name, bf16 first) one flat
            sizes = sorted({self.itemsize[p] for p in part}, key=lambda k: k != BF16_BYTES)  # buffer of the partitions
            groups = [[p for p in part if self.itemsize[p] == k] for k in sizes]  # (_all_gather_dtype), one handle
            self.handles[h] = [p for g in groups for p in g]  # (MultipleAllGatherHandles) for all of them
            flats = []
            for k, g in zip(sizes, groups):
                flats.append(self._new_block(f"flat:{h}:{k}", tuple((self.numel[p], k, PADDED) for p in g), ALLGATHER))
                self._staged(g)  # torch.cat([p.ds_tensor.to(device) ...], out=...) (pp:1359-1361)
            self.flat[h] = [flats, len(part)]
        else:  # world size 1: a copy per parameter; more: _all_gather_sequential's buffer (pp:1388)
            self.handles[h] = part
        for p in self.handles[h]:
            self.status[p] = INFLIGHT
            if h not in self.flat:
                self._alloc(p, padded=self.world > 1)
                self._staged([p])  # the all-gather's input, made after its buffer (pp:1388-1398)
            self.registry[p] = h

    def _staged(self, params) -> None:
        """With offloaded parameters over more ranks: each partition's GPU copy, made in turn, freed (in reverse, as
        the list holding them goes) once the all-gather or cat has read them."""
        if not self.staged:
            return
        blocks = [self._new_block(f"staged:{p}", ((self.numel[p], self.itemsize[p], PARTITION),), ALLGATHER)
                  for p in params]  # fmt: skip
        for b in reversed(blocks):
            self._unref(b)

    def _wait(self, p: str) -> None:
        h = self.registry.pop(p)
        for q in self.handles[h]:
            if self.status[q] == INFLIGHT:
                self.status[q] = AVAIL
                if h in self.flat:  # AllGatherCoalescedHandle.wait (pp:786-800): each param.data a torch.cat of its
                    self._alloc(q)  # pieces, made within the all-gather stream's context (ppc:395-404)
        if h in self.flat:  # the handle (and its flat buffers) lives while a parameter's registry entry holds it
            self.flat[h][1] -= 1
            if self.flat[h][1] == 0:
                for b in self.flat.pop(h)[0]:
                    self._unref(b)

    def _release_param(self, p: str) -> None:  # ppc:622-630, free_param pp:314
        if self.status[p] == AVAIL and not self.active[p]:
            self.status[p] = NA
            b, self.data[p] = self.data[p], None
            self.n_available -= self.numel[p]
            self._unref(b)

    def reset_step(self) -> None:  # ppc:250-290
        self._clean_inflight()
        if self.mode != COMPLETE:
            if self.mode == RECORD:
                self.param_order = []
                for m in self.submodule_order:  # construct_parameter_trace_from_module_trace ppc:244
                    s = self.fetched_for[m].popleft()
                    self.param_order += [(p, s) for p in self.mparams[m]]
                self.mode = COMPLETE
            else:
                self.mode = RECORD
        self.queue = deque(self.param_order)
        self.most_recent = defaultdict(lambda: int(-1e10))
        self.fetched_for = defaultdict(deque)
        self.step_id = 0
        self.n_available = 0

    def _clean_inflight(self) -> None:  # ppc:189-193
        for p in list(self.registry):
            if p in self.registry:
                self._wait(p)
            self._release_param(p)
        self.registry.clear()

    def _invalidate(self) -> None:  # ppc:195-200
        self.invalidations += 1
        self.mode = INVALID
        self.submodule_order, self.param_order, self.queue = [], [], None
        self._trace_version += 1
        self.most_recent, self.fetched_for = defaultdict(lambda: int(-1e10)), defaultdict(deque)
        self._clean_inflight()

    def pre(self, module: str, forward: bool, recompute: bool = False) -> None:  # po:531-543 / po:573-582
        if self.mode == COMPLETE:  # trace_prologue ppc:202-219
            if len(self.submodule_order) <= self.step_id or self.submodule_order[self.step_id] != module:
                self._invalidate()
        if self.mode == RECORD:  # record_module ppc:222-231
            self.submodule_order.append(module)
            self._trace_version += 1
            self.fetched_for[module].append(self.step_id)
        if not forward:
            self.active_bwd[module] = None
        self.fetch(module)
        if recompute and self.active_bwd:  # ppc:390-394: a frozen parameter fetched by a checkpoint recomputation
            owner = next(reversed(self.active_bwd))  # belongs to the innermost module in backward until its release
            for p in self.mparams[module]:
                if p in self.frozen:
                    self.active[p].add(owner)
                    self.recompute_params[owner].add(p)

    def access(self, module: str, p: str, recompute: bool) -> None:  # po:58-95 ZeROOrderedDict.__getitem__
        """`module`'s forward reads another module's parameter `p`: within the engine's forward (not a recomputation
        in the backward) a partitioned one is registered as `module`'s external parameter (gathered with it from now
        on) and gathered at once, synchronously on the compute stream (pp:1723 _all_gather, sequential)."""
        if recompute or self.world == 1 or self.status[p] != NA:
            return
        if p not in self.mparams[module]:
            self.mparams[module] = sorted([*self.mparams[module], p], key=self.ds_id.get)
            self._trace_version += 1
        self.status[p] = AVAIL
        self.n_available += self.numel[p]
        self._alloc(p, DEFAULT, padded=True)

    def fetch(self, module: str) -> None:  # _fetch_sub_module_impl ppc:350-490
        params = self.mparams[module]
        self._gather(params)
        for p in params:
            self.active[p].add(module)
            if p in self.registry:
                self._wait(p)
            assert self.status[p] == AVAIL, (module, p)
        if self.mode == COMPLETE:
            todo = {p for p in params if self.most_recent[p] < self.step_id}
            popped = set()
            while self.queue and len(popped) < len(todo):
                p, s = self.queue.popleft()
                self.most_recent[p] = s
                popped.add(p)
            if popped != todo:
                raise RuntimeError(f"tracing error at step {self.step_id}: {module}")
            if self.bucket > 0:
                limit = min(self.max_live - self.n_available, self.bucket)
                pf, n = [], 0
                while self.queue and n < limit:
                    p, s = self.queue.popleft()
                    do = self.status[p] == NA and p not in pf
                    self.most_recent[p] = max(self.most_recent[p], s)
                    if do:
                        pf.append(p)
                        n += self.numel[p]
                if n > 0:
                    self._gather(pf)
        self.step_id += 1

    def _params_to_release(self, module: str) -> set:  # ppc:632-664
        """The module's non-persistent params, minus those whose later queue entry was popped, minus those used again
        within max_reuse numel of ``submodule_order[step_id:]`` (whole modules: the loop stops before the first module
        reached with max_reuse traversed). The same set as the loop over the trace, found by bisection in
        _reuse_index (the loop took 0.2 s of a 2-GPU 8B LoRA sequence)."""
        key = (module, self.step_id)
        if key not in self.release_cache:
            cum, occurrences = self._reuse_index()
            s = self.step_id
            n = len(cum) - 1
            end = n if s >= n else min(n, bisect_left(cum, cum[s] + self.max_reuse, s))
            out = set()
            for p in self.mparams[module]:
                if p in self.persist or self.most_recent[p] > s:
                    continue
                at = occurrences.get(p, ())
                k = bisect_left(at, s)
                if not (k < len(at) and at[k] < end):
                    out.add(p)
            self.release_cache[key] = out
        return self.release_cache[key]

    def _reuse_index(self) -> tuple[list[int], dict[str, list[int]]]:
        """(cumulative numel of submodule_order's modules' params before each position, each param's positions in
        it), rebuilt when the trace or a module's params change."""
        if self._index_version != self._trace_version:
            cum, occurrences = [0], defaultdict(list)
            for j, m in enumerate(self.submodule_order):
                ps = self.mparams[m]
                cum.append(cum[-1] + sum(self.numel[p] for p in ps))
                for p in ps:
                    occurrences[p].append(j)
            self._index, self._index_version = (cum, dict(occurrences)), self._trace_version
        return self._index

    def release(self, module: str, forward: bool) -> None:  # ppc:492-533
        params = self.mparams[module]
        to_release = self._params_to_release(module) if self.mode == COMPLETE else set(params)
        if not forward:  # ppc:502-522: with the frozen parameters its recomputation fetched (persistent ones stay)
            self.active_bwd.pop(module, None)
            extra = self.recompute_params.pop(module, set())
            to_release = to_release | {p for p in extra if p not in self.persist}
            params = params + sorted(extra - set(params), key=self.ds_id.get)
        for p in params:
            self.active[p].discard(module)
            if p in to_release:
                self._release_param(p)

    def release_backward_leftovers(self) -> None:  # ppc:552-566
        while self.active_bwd:
            module, _ = self.active_bwd.popitem()
            for p in [*self.mparams[module], *sorted(self.recompute_params.pop(module, set()), key=self.ds_id.get)]:
                self.active[p].discard(module)
                if p not in self.persist:
                    self._release_param(p)

    def release_and_reset_all(self) -> None:  # ppc:535-550 via s3:2878 _partition_all_parameters
        for p in self.numel:
            if p in self.registry:
                self._wait(p)
            self.active[p].clear()
            self._release_param(p)

    def post_step(self) -> None:  # s3:2834-2841: persistent params all-gathered on the compute stream
        for p in sorted(self.persist, key=self.ds_id.get):
            if self.status[p] == NA:
                self.status[p] = AVAIL
                self.n_available += self.numel[p]
                self._alloc(p, DEFAULT, padded=self.world > 1)  # (pp:2022 _allgather_params_coalesced: a view each)


def coordinator_events(model: Z3Model, *, prefetch_bucket: int, persistence_threshold: int, steps: int = 3,
                       max_live: int = MAX_LIVE_PARAMETERS, max_reuse: int = MAX_REUSE_DISTANCE, world: int = 1,
                       offloaded: bool = False) -> tuple[list[list[Event]], _Coordinator]:
    """Per training step, the ordered fetch / release events (Event) of a ZeRO-3 run (world size 1 with offloaded
    parameters, or `world` ranks), and the coordinator after the last step (its ``mode``, ``invalidations``)."""
    c = _Coordinator(model, prefetch_bucket, persistence_threshold, max_live, max_reuse, world, offloaded)
    hooks = step_hooks(model)
    per_step = []
    for _ in range(steps):
        c.events = []
        for h in hooks:
            kind = h[0]
            recompute = h[-1] is True if len(h) > 2 else False  # (an access's last field is its flag too)
            c.where = f"{kind}:{h[1]}{':recompute' if recompute else ''}" if len(h) > 1 else kind
            if kind == "reset":
                c.reset_step()
            elif kind == "pre_fwd":
                c.pre(h[1], forward=True, recompute=recompute)
            elif kind == "post_fwd":
                c.release(h[1], forward=True)
            elif kind == "pre_bwd":
                c.pre(h[1], forward=False)
            elif kind == "post_bwd":
                c.release(h[1], forward=False)
            elif kind == "access":
                c.access(h[1], h[2], h[3])
            elif kind == "hold":
                c.hold(h[1])
            elif kind == "unhold":
                c.unhold(h[1])
            elif kind == "leftovers":
                c.release_backward_leftovers()
            elif kind == "optimizer":
                c.release_and_reset_all()
                c.post_step()
        per_step.append(c.events)
    return per_step, c


def hf_zero3_events(spec, steps: int = 3, world: int = 1, lora: tuple[int, frozenset] | None = None,
                    offloaded: bool = False) -> list[list[Event]]:
    """coordinator_events for a ModelSpec with the HF Trainer's "auto" ZeRO-3 values (prefetch bucket 0.9 h^2,
    persistence threshold 10 h) and DeepSpeed's defaults for max live parameters / reuse distance (``lora``:
    zero3_modules.decoder_modules')."""
    if world > 2:  # the same decisions as on 2 ranks, other bytes
        return [sized_for(step, world) for step in _multi_rank_events(spec, steps, lora, offloaded)]
    if world == 2:
        return list(_multi_rank_events(spec, steps, lora, offloaded))
    return _events(spec, steps, 1, lora, offloaded)


def _events(spec, steps: int, world: int, lora, offloaded: bool) -> list[list[Event]]:
    h = spec.hidden_size
    events, _ = coordinator_events(decoder_modules(spec, lora), prefetch_bucket=int(0.9 * h * h),
                                   persistence_threshold=10 * h, steps=steps, world=world, offloaded=offloaded)
    return events


@lru_cache(maxsize=16)
def _multi_rank_events(spec, steps: int, lora, offloaded: bool) -> tuple[list[Event], ...]:
    """The coordinator's events on 2 ranks (kept: they serve every world size above 1)."""
    return tuple(_events(spec, steps, 2, lora, offloaded))


# ---------------------------------------------------------------------------------------------- stream-1 replay
def allgather_ops(events: list[Event], free_lag=0) -> list[tuple[str, int, int]]:
    """The all-gather stream's ("A"|"F", block, nbytes) in order. ``free_lag``: an int, or a function of the
    release Event giving one: a release completes only after that many later all-gather allocations (0: before
    the next one). In the runs record_stream defers the free to the allocator's first malloc after the compute
    stream passed the release: at once for all but the tied lm_head weight released after the lm_head backward
    (HEAD_FREE_LAGS in zero3_offload.py)."""
    return [op[:3] for op in allgather_ops_at(events, free_lag)]


def allgather_ops_at(events: list[Event], free_lag=0) -> list[tuple[str, int, int, int]]:
    """allgather_ops with the index in `events` of the event each op comes at: a fetch's own, a free's release (or,
    lagging, the fetch it precedes; the step's last event for one still pending at its end)."""
    lag_of = free_lag if callable(free_lag) else (lambda e: free_lag)
    out: list[tuple[str, int, int, int]] = []
    pending: list[list[int]] = []  # [allocations still to wait, block, nbytes]
    on_allgather: set[int] = set()
    for at, e in enumerate(events):
        if e.kind == "fetch":
            if e.stream != ALLGATHER:
                continue
            on_allgather.add(e.block)
            for x in pending:
                x[0] -= 1
            out += [("F", b, n, at) for k, b, n in pending if k < 0]
            pending = [x for x in pending if x[0] >= 0]
            out.append(("A", e.block, e.nbytes, at))
        elif e.block in on_allgather:
            lag = lag_of(e)
            if lag <= 0:
                out.append(("F", e.block, e.nbytes, at))
            else:
                pending.append([lag, e.block, e.nbytes])
    out += [("F", b, n, len(events) - 1) for _, b, n in pending]
    return out


def head_free_lag(lag: int):
    """free_lag for allgather_ops: ``lag`` for the lm_head weight's release at lm_head's post-backward (the
    compute stream is still busy with the vocab-sized matmuls when the CPU frees it), 0 for every other (the lags the
    histories show: zero3_offload.HEAD_FREE_LAGS)."""
    return lambda e: lag if e.where == "post_bwd:lm_head" else 0


def pool_peak(ops: list[tuple[str, int, int]], total_memory_bytes: int = 150 * 2**30) -> tuple[int, int]:
    """(peak reserved, peak live bytes) of ``ops`` replayed alone through CachingAllocator on one stream."""
    from .caching import CachingAllocator

    a = CachingAllocator(total_memory_bytes=total_memory_bytes)
    blocks, live, peak = {}, 0, 0
    for kind, b, n in ops:
        if kind == "A":
            blocks[b] = a.malloc(n)
            live += n
            peak = max(peak, live)
        else:
            a.free(blocks.pop(b))
            live -= n
    return a.peak_reserved, peak
