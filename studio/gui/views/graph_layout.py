"""Qt-free layered (Sugiyama-style, top-to-bottom) layout of an ONNX graph with foldable groups.

Pipeline: ``GraphSpec.from_proto`` (once per model) -> ``fold(spec, collapsed)`` (groups from the
node-name hierarchy become single boxes) -> ``layout(display)``: longest-path layering, dummy
nodes on long edges, barycentric ordering sweeps (best by crossing count), and x placement by
isotonic regression (pool-adjacent-violators) toward neighbour barycentres. Roughly
O((V + E) log V) per sweep, so a transformer's ~1000 nodes lay out in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from studio.core.graph import WEIGHTED_OPS, group_of

GROUP_PREFIX = "group:"
NODE_H = 36.0
LAYER_GAP = 34.0
NODE_GAP = 18.0
DUMMY_W = 6.0
CHAR_W = 7.0
MAX_SUBLABEL = 28


@dataclass
class SpecNode:
    name: str  # unique (unnamed nodes get "<op>_<index>")
    op_type: str
    group: tuple[str, ...]
    kind: str = "op"  # op | input | output


@dataclass
class GraphSpec:
    """The model's node DAG: nodes plus deduplicated producer->consumer edges (by index)."""

    nodes: list[SpecNode]
    edges: list[tuple[int, int]]
    weighted: set[str] = field(default_factory=set)  # names of nodes with an initializer weight

    @classmethod
    def from_proto(cls, proto: onnx.ModelProto, *, hide_constants: bool = True) -> GraphSpec:
        """Nodes in graph order plus graph inputs/outputs; Constant nodes hidden (they act like
        initializers and would triple a transformer's node count)."""
        g = proto.graph
        inits = {t.name for t in g.initializer}
        nodes: list[SpecNode] = []
        producer: dict[str, int] = {}
        hidden_values: set[str] = set()
        for vi in g.input:
            if vi.name not in inits:
                producer[vi.name] = len(nodes)
                nodes.append(SpecNode(vi.name, "Input", (), "input"))
        used: set[str] = {n.name for n in nodes}
        weighted: set[str] = set()
        node_index: list[int | None] = []
        for i, n in enumerate(g.node):
            if hide_constants and n.op_type == "Constant":
                hidden_values.update(n.output)
                node_index.append(None)
                continue
            name = n.name or f"{n.op_type}_{i}"
            while name in used:
                name = f"{name}_{i}"
            used.add(name)
            if n.op_type in WEIGHTED_OPS and any(x in inits for x in n.input):
                weighted.add(name)
            node_index.append(len(nodes))
            for o in n.output:
                if o:
                    producer[o] = len(nodes)
            nodes.append(SpecNode(name, n.op_type, group_of(n.name) if n.name else ()))
        edges: set[tuple[int, int]] = set()
        for n, k in zip(g.node, node_index, strict=True):
            if k is None:
                continue
            for x in n.input:
                p = producer.get(x)
                if p is not None and p != k:
                    edges.add((p, k))
        for vo in g.output:
            p = producer.get(vo.name)
            k = len(nodes)
            nodes.append(SpecNode(f"output:{vo.name}", "Output", (), "output"))
            if p is not None:
                edges.add((p, k))
        return cls(nodes, sorted(edges), weighted)

    def group_sizes(self) -> dict[tuple[str, ...], int]:
        """Number of nodes under every group prefix (depth >= 1)."""
        out: dict[tuple[str, ...], int] = {}
        for n in self.nodes:
            for d in range(1, len(n.group) + 1):
                out[n.group[:d]] = out.get(n.group[:d], 0) + 1
        return out


@dataclass
class DisplayNode:
    id: str  # spec node name, or "group:/a/b" for a folded group
    label: str  # op type, or the group's last name part
    sublabel: str  # short node name, or "<n> nodes"
    kind: str  # op | input | output | group
    members: list[str]  # spec node names it stands for
    layer_name: str | None  # the weighted node's name (what layer_selected emits)
    group: tuple[str, ...]  # the folded group, or the node's own name hierarchy
    width: float = 0.0
    height: float = NODE_H


@dataclass
class DisplayGraph:
    nodes: list[DisplayNode]
    edges: list[tuple[int, int]]
    index: dict[str, int]  # spec node name -> display node index


@dataclass
class Layout:
    x: list[float]  # node centres
    y: list[float]
    layer: list[int]
    edge_paths: list[list[tuple[float, float]]]  # one polyline per DisplayGraph edge
    width: float
    height: float
    crossings: int


def group_id(group: tuple[str, ...]) -> str:
    return GROUP_PREFIX + "/" + "/".join(group)


def _short(name: str) -> str:
    parts = [p for p in name.split("/") if p]
    s = "/".join(parts[-2:]) if parts else name
    return s if len(s) <= MAX_SUBLABEL else "…" + s[-(MAX_SUBLABEL - 1) :]


def default_collapsed(spec: GraphSpec, max_visible: int = 80) -> set[tuple[str, ...]]:
    """Fold groups at the deepest name depth that keeps at most ``max_visible`` boxes
    (for MiniLM: ``encoder/layer.N`` boxes); small graphs stay fully expanded."""
    if len(spec.nodes) <= max_visible:
        return set()
    sizes = spec.group_sizes()
    max_depth = max((len(g) for g in sizes), default=0)
    best: set[tuple[str, ...]] = set()
    for depth in range(1, max_depth + 1):
        cand = {g for g, n in sizes.items() if len(g) == depth and n >= 2}
        visible = len(fold(spec, cand).nodes)
        if visible <= max_visible or not best:
            best = cand
        if visible > max_visible:
            break
    return best


def expand_group(spec: GraphSpec, collapsed: set[tuple[str, ...]], group: tuple[str, ...],
                 max_children: int = 40) -> set[tuple[str, ...]]:  # fmt: skip
    """Collapsed set after opening ``group``: a big group opens one level (its sub-groups
    stay folded) so a click never floods the view."""
    out = {c for c in collapsed if c != group}
    sizes = spec.group_sizes()
    if sizes.get(group, 0) > max_children:
        out |= {
            g for g, n in sizes.items() if len(g) == len(group) + 1 and g[: len(group)] == group and n >= 2
        }
    return out


def collapse_group(collapsed: set[tuple[str, ...]], group: tuple[str, ...]) -> set[tuple[str, ...]]:
    """Collapsed set after folding ``group`` (its folded descendants are subsumed)."""
    return {c for c in collapsed if c[: len(group)] != group} | {group}


def fold(spec: GraphSpec, collapsed: set[tuple[str, ...]], *, char_w: float = CHAR_W) -> DisplayGraph:
    """Replace every node under a collapsed group (outermost wins) by one group box."""
    nodes: list[DisplayNode] = []
    index: dict[str, int] = {}
    by_group: dict[tuple[str, ...], int] = {}
    for sn in spec.nodes:
        g = next((sn.group[:d] for d in range(1, len(sn.group) + 1) if sn.group[:d] in collapsed), None)
        if g is not None:
            k = by_group.get(g)
            if k is None:
                k = by_group[g] = len(nodes)
                title = "/".join(g[-2:]) if len(g) >= 3 else g[-1]  # "layer.0/attention" keeps context
                nodes.append(DisplayNode(group_id(g), title, "", "group", [], None, g))
            nodes[k].members.append(sn.name)
            index[sn.name] = k
            continue
        index[sn.name] = len(nodes)
        is_layer = sn.name in spec.weighted
        sub = _short(sn.name) if sn.kind == "op" else _short(sn.name.removeprefix("output:"))
        nodes.append(
            DisplayNode(sn.name, sn.op_type, sub, sn.kind, [sn.name], sn.name if is_layer else None, sn.group)
        )
    for dn in nodes:
        if dn.kind == "group":
            n_layers = sum(1 for m in dn.members if m in spec.weighted)
            dn.sublabel = (
                f"{len(dn.members)} nodes, {n_layers} layers" if n_layers else f"{len(dn.members)} nodes"
            )
            dn.label = "▸ " + dn.label
        dn.width = max(len(dn.label), len(dn.sublabel), 4) * char_w + 20
    edges = sorted({(index[a], index[b]) for a, b in ((spec.nodes[i].name, spec.nodes[j].name)
                                                      for i, j in spec.edges) if index[a] != index[b]})  # fmt: skip
    return DisplayGraph(nodes, edges, index)


# ----------------------------------------------------------------------------- layout


def _acyclic(n: int, edges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Edges with the few that close a cycle (possible after folding) reversed: Kahn's order,
    breaking stalls at the node with the fewest unresolved inputs."""
    indeg = [0] * n
    succ: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        succ[a].append(b)
        indeg[b] += 1
    rank = [-1] * n
    ready = [i for i in range(n) if indeg[i] == 0]
    ready.reverse()
    done = 0
    left = set(range(n))
    while done < n:
        if not ready:
            k = min(left, key=lambda i: (indeg[i], i))
            indeg[k] = 0
            ready.append(k)
        k = ready.pop()
        if rank[k] >= 0:
            continue
        rank[k] = done
        done += 1
        left.discard(k)
        for s in reversed(succ[k]):
            indeg[s] -= 1
            if indeg[s] == 0 and rank[s] < 0:
                ready.append(s)
    return [(a, b) if rank[a] < rank[b] else (b, a) for a, b in edges]


def _count_crossings(upper_pos: list[int], pairs: list[tuple[int, int]]) -> int:
    """Crossings between two adjacent layers: inversions of lower positions (Fenwick tree)."""
    if len(pairs) < 2:
        return 0
    seq = [lo for _, lo in sorted(pairs)]
    size = max(seq) + 2
    tree = [0] * (size + 1)
    inv = 0
    for i, v in enumerate(seq):
        # count earlier items > v
        j, le = v + 1, 0
        while j > 0:
            le += tree[j]
            j -= j & -j
        inv += i - le
        j = v + 1
        while j <= size:
            tree[j] += 1
            j += j & -j
    return inv


def _isotonic(desired: list[float], sep: list[float]) -> list[float]:
    """Positions closest (least squares) to ``desired`` keeping x[i+1] - x[i] >= sep[i]."""
    n = len(desired)
    off = [0.0] * n
    for i in range(1, n):
        off[i] = off[i - 1] + sep[i - 1]
    vals: list[float] = []
    wts: list[int] = []
    for i in range(n):
        vals.append(desired[i] - off[i])
        wts.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            v, w = vals.pop(), wts.pop()
            vals[-1] = (vals[-1] * wts[-1] + v * w) / (wts[-1] + w)
            wts[-1] += w
    out: list[float] = []
    for v, w in zip(vals, wts, strict=True):
        out.extend([v] * w)
    return [out[i] + off[i] for i in range(n)]


def layout(display: DisplayGraph, *, sweeps: int = 6) -> Layout:
    """Layered top-to-bottom layout of ``display``; positions are box centres in scene units."""
    n = len(display.nodes)
    if n == 0:
        return Layout([], [], [], [], 0.0, 0.0, 0)
    edges = _acyclic(n, display.edges)
    succ: list[list[int]] = [[] for _ in range(n)]
    pred_count = [0] * n
    for a, b in edges:
        succ[a].append(b)
        pred_count[b] += 1
    # longest-path layering in topological order
    layer = [0] * n
    order: list[int] = []
    stack = [i for i in range(n) if pred_count[i] == 0][::-1]
    rem = pred_count[:]
    while stack:
        k = stack.pop()
        order.append(k)
        for s in succ[k]:
            if layer[k] + 1 > layer[s]:
                layer[s] = layer[k] + 1
            rem[s] -= 1
            if rem[s] == 0:
                stack.append(s)
    # pull sources down next to their first consumer (graph inputs of a deep subgraph, weights)
    for k in reversed(order):
        if pred_count[k] == 0 and succ[k]:
            layer[k] = max(layer[k], min(layer[s] for s in succ[k]) - 1)
    # dummy nodes split edges longer than one layer
    width = [dn.width for dn in display.nodes]
    node_layer = layer[:]
    up: list[list[int]] = [[] for _ in range(n)]
    down: list[list[int]] = [[] for _ in range(n)]
    chains: list[list[int]] = []
    for a, b in edges:
        chain = [a]
        for lv in range(layer[a] + 1, layer[b]):
            d = len(node_layer)
            node_layer.append(lv)
            width.append(DUMMY_W)
            up.append([])
            down.append([])
            chain.append(d)
        chain.append(b)
        for u, v in zip(chain, chain[1:], strict=False):
            down[u].append(v)
            up[v].append(u)
        chains.append(chain)
    n_all = len(node_layer)
    n_layers = max(node_layer) + 1
    layers: list[list[int]] = [[] for _ in range(n_layers)]
    # initial order: DFS discovery from the sources keeps branches together
    seen = [False] * n_all
    dfs = [i for i in range(n) if not up[i]][::-1]
    while dfs:
        k = dfs.pop()
        if seen[k]:
            continue
        seen[k] = True
        layers[node_layer[k]].append(k)
        dfs.extend(reversed(down[k]))
    for k in range(n_all):
        if not seen[k]:
            layers[node_layer[k]].append(k)
    pos = [0] * n_all
    for lv in layers:
        for i, k in enumerate(lv):
            pos[k] = i

    def total_crossings() -> int:
        c = 0
        for lv in layers[:-1]:
            c += _count_crossings(pos, [(pos[u], pos[v]) for u in lv for v in down[u]])
        return c

    def sweep(downward: bool) -> None:
        rng = range(1, n_layers) if downward else range(n_layers - 2, -1, -1)
        for li in rng:
            lv = layers[li]
            keyed = []
            for k in lv:
                nb = up[k] if downward else down[k]
                bc = sum(pos[x] for x in nb) / len(nb) if nb else float(pos[k])
                keyed.append((bc, pos[k], k))
            keyed.sort()
            layers[li] = [k for _, _, k in keyed]
            for i, k in enumerate(layers[li]):
                pos[k] = i

    best = total_crossings()
    best_layers = [lv[:] for lv in layers]
    for s in range(sweeps):
        if best == 0:
            break
        sweep(downward=s % 2 == 0)
        c = total_crossings()
        if c < best:
            best, best_layers = c, [lv[:] for lv in layers]
    layers = best_layers
    for lv in layers:
        for i, k in enumerate(lv):
            pos[k] = i
    # x placement: pack, then pull each layer toward its neighbours' mean x, keeping order + gaps
    x = [0.0] * n_all
    for lv in layers:
        cur = 0.0
        for k in lv:
            x[k] = cur + width[k] / 2
            cur += width[k] + NODE_GAP
    for it in range(8):
        downward = it % 2 == 0
        rng = range(1, n_layers) if downward else range(n_layers - 2, -1, -1)
        for li in rng:
            lv = layers[li]
            if not lv:
                continue
            desired = []
            for k in lv:
                nb = up[k] if downward else down[k]
                desired.append(sum(x[v] for v in nb) / len(nb) if nb else x[k])
            sep = [(width[a] + width[b]) / 2 + NODE_GAP for a, b in zip(lv, lv[1:], strict=False)]
            for k, v in zip(lv, _isotonic(desired, sep), strict=True):
                x[k] = v
    lo = min(x[k] - width[k] / 2 for k in range(n_all))
    x = [v - lo for v in x]
    pitch = NODE_H + LAYER_GAP
    y = [NODE_H / 2 + node_layer[k] * pitch for k in range(n_all)]
    paths = []
    for chain in chains:
        pts = [(x[chain[0]], y[chain[0]] + NODE_H / 2)]
        pts += [(x[d], y[d]) for d in chain[1:-1]]
        pts.append((x[chain[-1]], y[chain[-1]] - NODE_H / 2))
        paths.append(pts)
    # edges were possibly reversed to break a cycle: restore their direction
    paths = [p if e == o else p[::-1] for p, e, o in zip(paths, edges, display.edges, strict=True)]
    width_total = max(x[k] + width[k] / 2 for k in range(n_all))
    # chains were built in display.edges order, so paths[i] belongs to display.edges[i]
    return Layout(x[:n], y[:n], layer[:n], paths, width_total, n_layers * pitch - LAYER_GAP, best)


def layout_model(spec: GraphSpec, collapsed: set[tuple[str, ...]], *, char_w: float = CHAR_W):
    """Fold then lay out: the one call the GUI's worker makes. Returns (DisplayGraph, Layout)."""
    display = fold(spec, collapsed, char_w=char_w)
    return display, layout(display)
