"""Mutation testing of the scoring core, with a ratchet (``make mutation``; docs/testing.md).

Why a runner of our own and not mutmut or cosmic-ray: mutmut 3 skips every decorated function,
so ``@property`` ``Interval.low`` / ``high`` (where the interval is clipped to the metric's
support) would never be mutated, and it mutates whole files where only ``normalize`` of
``bench/search/index.py`` and the ctr evidence functions belong to the scoring core; cosmic-ray
starts one pytest process per mutant, a few seconds each of importing torch, faiss and scipy,
which for about a thousand mutants is far beyond the 15 minutes this target may take.

How it works: each target function's AST gets one small change at a time (an operator swapped,
a comparison loosened, ``and``/``or`` swapped, a number bumped, ``min``/``max`` swapped, an
operand of ``-``, ``+``, ``&``, ``|`` or a clipping ``max(a, b)`` dropped, a ``not`` or minus
removed). The module is recompiled with that change and the function's ``__code__`` swapped in
a forked child (every ``from ... import f`` sees it), which runs only the tests that called the
function in an unmutated coverage run, stopping at the first failure. A failing test or a
timeout (10x the tests' own time + 10 s) kills the mutant; passing tests let it survive.

    python tests/mutate.py                # run, print per-module scores and the survivors
    python tests/mutate.py --check        # ... and fail if a module's score fell below the
                                          # one recorded in tests/mutation_score.json
    python tests/mutate.py --update       # record the scores (never lower without --force)
    python tests/mutate.py --module bench.scoring.stats --jobs 2
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib
import json
import os
import signal
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCORE_FILE = ROOT / "tests" / "mutation_score.json"

# module -> the functions mutated there (None: every function and method of the module)
TARGETS: dict[str, tuple[str, ...] | None] = {
    "bench.scoring.metrics": None,
    "bench.scoring.stats": None,
    "bench.scoring.verdicts": None,
    "bench.vectors.whitening": None,
    "bench.search.index": ("normalize",),
    "bench.tasks.ctr.train": ("metrics", "scored", "evidence"),
    "bench.tasks.ctr": ("scored_rows",),
}
# the fast tests that may kill them; each mutant runs only those that called its function
TESTS = [
    "tests/test_metrics.py",
    "tests/test_stats.py",
    "tests/test_stats_linear.py",
    "tests/test_verdicts.py",
    "tests/test_ablation_validity.py",
    "tests/test_whitening.py",
    "tests/test_index.py",
    "tests/test_scoring_oracles.py",
    "tests/test_scoring_properties.py",
    "tests/test_scoring_edges.py",
    "tests/test_ctr.py::test_task_metrics_equal_bench_metrics_and_sklearn",
]

SWAP_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
              ast.FloorDiv: ast.Div, ast.Pow: ast.Mult, ast.Mod: ast.Mult,
              ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd}
KEEP_LEFT = (ast.Add, ast.Sub, ast.BitAnd, ast.BitOr)
KEEP_RIGHT = (ast.BitAnd, ast.BitOr)
SWAP_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
            ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
            ast.In: ast.NotIn, ast.NotIn: ast.In}
SWAP_NAME = {"min": "max", "max": "min", "minimum": "maximum", "maximum": "minimum",
             "mean": "max", "nanmean": "nanmax", "any": "all", "all": "any"}


@dataclass
class Mutant:
    module: str
    qualname: str  # the top-level function or Class.method whose __code__ is swapped
    line: int  # relative to the function's ``def``
    col: int
    end_col: int
    op: str
    code: types.CodeType | None = None

    @property
    def ident(self) -> str:
        return f"{self.qualname}:+{self.line}:{self.col}-{self.end_col}:{self.op}"


# --------------------------------------------------------------------------- mutation sites


def _skip_ids(func: ast.AST) -> set[int]:
    """Nodes never mutated: docstrings, f-strings (error messages), annotations, decorators."""
    skip: set[int] = set()

    def mark(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(func):
        if isinstance(node, ast.JoinedStr):
            mark(node)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            mark(node.args)
            if not isinstance(node, ast.Lambda):
                mark(node.returns)
                for d in node.decorator_list:
                    mark(d)
                body = node.body
                if body and isinstance(body[0], ast.Expr) and isinstance(
                        getattr(body[0], "value", None), ast.Constant) and isinstance(
                        body[0].value.value, str):
                    mark(body[0])
        if isinstance(node, ast.AnnAssign):
            mark(node.annotation)
    return skip


def _changes(node: ast.AST):
    """(label, apply) for each mutation of ``node``; apply(node) returns the replacement."""
    if isinstance(node, ast.BinOp):
        swapped = SWAP_BINOP.get(type(node.op))
        if swapped is not None:
            yield (f"{type(node.op).__name__}->{swapped.__name__}",
                   lambda n, s=swapped: ast.BinOp(n.left, s(), n.right))
        if isinstance(node.op, KEEP_LEFT):
            yield f"{type(node.op).__name__}->left", lambda n: n.left
        if isinstance(node.op, KEEP_RIGHT):
            yield f"{type(node.op).__name__}->right", lambda n: n.right
    elif isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            swapped = SWAP_CMP.get(type(op))
            if swapped is not None:
                def apply(n, i=i, s=swapped):
                    ops = list(n.ops)
                    ops[i] = s()
                    return ast.Compare(n.left, ops, n.comparators)
                yield f"{type(op).__name__}->{swapped.__name__}[{i}]", apply
    elif isinstance(node, ast.BoolOp):
        other = ast.Or if isinstance(node.op, ast.And) else ast.And
        yield (f"{type(node.op).__name__}->{other.__name__}",
               lambda n, o=other: ast.BoolOp(o(), n.values))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub | ast.Invert):
        yield f"drop-{type(node.op).__name__}", lambda n: n.operand
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, bool):
            yield f"{node.value}->{not node.value}", lambda n: ast.Constant(not n.value)
        elif isinstance(node.value, int | float):
            yield f"{node.value!r}->+1", lambda n: ast.Constant(n.value + 1)
    elif isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name in ("min", "max") and len(node.args) == 2 and not node.keywords:
            yield f"{name}->arg0", lambda n: n.args[0]
            yield f"{name}->arg1", lambda n: n.args[1]
        if name == "abs" and len(node.args) == 1:
            yield "drop-abs", lambda n: n.args[0]
        if name in ("min", "max"):  # the builtins; numpy's and methods through attributes
            other = SWAP_NAME[name]
            yield f"{name}->{other}", lambda n, o=other: ast.Call(
                ast.Name(o, ast.Load()), n.args, n.keywords)
        attr = node.func.attr if isinstance(node.func, ast.Attribute) else None
        if attr in SWAP_NAME:
            other = SWAP_NAME[attr]
            yield f".{attr}->.{other}", lambda n, o=other: ast.Call(
                ast.Attribute(n.func.value, o, ast.Load()), n.args, n.keywords)


def _functions(tree: ast.Module, wanted: tuple[str, ...] | None):
    """(qualname, def node) of the module's top-level functions and class methods."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and (wanted is None or node.name in wanted):
            yield node.name, node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                qual = f"{node.name}.{item.name}" if isinstance(item, ast.FunctionDef) else None
                if qual and (wanted is None or qual in wanted or node.name in wanted):
                    yield qual, item


def _replace(parent_tree: ast.Module, target: ast.AST, new: ast.AST) -> None:
    for parent in ast.walk(parent_tree):
        for field, value in ast.iter_fields(parent):
            if value is target:
                setattr(parent, field, new)
                return
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if item is target:
                        value[i] = new
                        return
    raise LookupError("node not found")


def _find_code(code: types.CodeType, qualname: str) -> types.CodeType | None:
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            if const.co_qualname == qualname:
                return const
            found = _find_code(const, qualname)
            if found is not None:
                return found
    return None


def mutants_of(module_name: str, wanted: tuple[str, ...] | None) -> list[Mutant]:
    module = importlib.import_module(module_name)
    path = Path(module.__file__)
    source = path.read_text()
    tree = ast.parse(source)
    out = []
    for qualname, func in _functions(tree, wanted):
        skip = _skip_ids(func)
        original = _target_function(module, qualname)
        sites = [n for n in ast.walk(func) if id(n) not in skip and n is not func]
        for index, node in enumerate(sites):
            for label, apply in _changes(node):
                mutated = copy.deepcopy(tree)
                # the same node in the copy: walk order is deterministic
                fcopy = dict(_functions(mutated, (qualname,)))[qualname]
                csite = [n for n in ast.walk(fcopy) if n is not fcopy
                         and id(n) not in _skip_ids(fcopy)][index]
                new = apply(csite)
                ast.copy_location(new, csite)
                _replace(mutated, csite, new)
                ast.fix_missing_locations(mutated)
                try:
                    code = compile(mutated, str(path), "exec")
                except (SyntaxError, ValueError):
                    continue
                fcode = _find_code(code, qualname)
                if fcode is None or fcode.co_freevars != original.__code__.co_freevars:
                    continue
                out.append(Mutant(module_name, qualname, node.lineno - func.lineno,
                                  node.col_offset, node.end_col_offset, label, fcode))
    return out


def _target_function(module: types.ModuleType, qualname: str) -> types.FunctionType:
    obj = module
    for part in qualname.split("."):
        owner = obj
        obj = owner.__dict__[part] if isinstance(owner, type) else getattr(owner, part)
    if isinstance(obj, property):
        obj = obj.fget
    if isinstance(obj, staticmethod | classmethod):
        obj = obj.__func__
    return obj


# --------------------------------------------------------------------------- running tests


class _Coverage:
    """pytest plugin: which tests call each target function (sys.setprofile, call events)."""

    def __init__(self, codes: dict[types.CodeType, str]):
        self.codes = codes
        self.current: str | None = None
        self.hits: dict[str, list[str]] = {}
        self.durations: dict[str, float] = {}
        self.failed: list[str] = []

    def _profile(self, frame, event, arg):
        if event == "call" and self.current is not None:
            key = self.codes.get(frame.f_code)
            if key is not None:
                tests = self.hits.setdefault(key, [])
                if not tests or tests[-1] != self.current:
                    tests.append(self.current)

    def pytest_runtest_logstart(self, nodeid, location):
        self.current = nodeid
        self.durations[nodeid] = time.perf_counter()
        sys.setprofile(self._profile)

    def pytest_runtest_logfinish(self, nodeid, location):
        sys.setprofile(None)
        self.durations[nodeid] = time.perf_counter() - self.durations[nodeid]
        self.current = None

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.failed.append(report.nodeid)


def _all_codes(code: types.CodeType):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _all_codes(const)


def _quiet() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


def _start(mutant: Mutant, tests: list[str], timeout: int) -> int:
    pid = os.fork()
    if pid == 0:  # child: swap the code in, run the tests, exit with pytest's status
        try:
            _quiet()
            signal.alarm(timeout)
            module = importlib.import_module(mutant.module)
            _target_function(module, mutant.qualname).__code__ = mutant.code
            import pytest
            status = pytest.main(["-x", "-q", "-p", "no:cacheprovider", *tests])
            os._exit(int(status))
        except BaseException:
            os._exit(3)
    return pid


def run(modules: list[str], jobs: int, verbose: bool, exclude: tuple[str, ...] = ()) -> dict:
    import pytest

    mutants = [m for name in modules for m in mutants_of(name, TARGETS[name])]
    codes = {}
    for name in modules:
        module = importlib.import_module(name)
        for qualname in {m.qualname for m in mutants if m.module == name}:
            for code in _all_codes(_target_function(module, qualname).__code__):
                codes[code] = f"{name}:{qualname}"
    coverage = _Coverage(codes)
    started = time.perf_counter()
    tests = [t for t in TESTS if (ROOT / t.split("::")[0]).exists()
             and t.split("::")[0] not in exclude]
    status = pytest.main(["-q", "-p", "no:cacheprovider", *tests], plugins=[coverage])
    if status != 0 or coverage.failed:
        raise SystemExit(f"mutation: the unmutated tests fail ({coverage.failed}); fix them first")
    print(f"mutation: {len(mutants)} mutants of {len(modules)} modules; coverage run "
          f"{time.perf_counter() - started:.0f} s", flush=True)

    results: dict[str, str] = {}
    queue = list(mutants)
    running: dict[int, Mutant] = {}
    done = 0
    while queue or running:
        while queue and len(running) < jobs:
            mutant = queue.pop(0)
            tests = coverage.hits.get(f"{mutant.module}:{mutant.qualname}", [])
            if not tests:
                results[f"{mutant.module}:{mutant.ident}"] = "no tests"
                continue
            tests = sorted(tests, key=coverage.durations.get)  # quick kills first
            budget = int(10 * sum(coverage.durations[t] for t in tests) + 10)
            running[_start(mutant, tests, budget)] = mutant
        if not running:
            continue
        pid, wait_status = os.wait()
        mutant = running.pop(pid)
        if os.WIFSIGNALED(wait_status):
            outcome = "killed (timeout)" if os.WTERMSIG(wait_status) == signal.SIGALRM \
                else "killed (crash)"
        else:
            code = os.WEXITSTATUS(wait_status)
            outcome = {0: "survived", 1: "killed"}.get(code, f"killed (pytest status {code})")
        results[f"{mutant.module}:{mutant.ident}"] = outcome
        done += 1
        if verbose or outcome == "survived":
            print(f"  {outcome:>9}  {mutant.module}:{mutant.ident}", flush=True)
        if done % 50 == 0:
            print(f"  ... {done}/{len(mutants)} in {time.perf_counter() - started:.0f} s",
                  flush=True)

    scores = {}
    for name in modules:
        mine = {k: v for k, v in results.items() if k.split(":", 1)[0] == name}
        killed = sum(v.startswith("killed") for v in mine.values())
        scores[name] = {"killed": killed, "total": len(mine)}
    survivors = sorted(k for k, v in results.items() if not v.startswith("killed"))
    print(f"mutation: done in {time.perf_counter() - started:.0f} s")
    return {"scores": scores, "survivors": survivors, "results": results}


# --------------------------------------------------------------------------- ratchet


def _fraction(score: dict) -> float:
    return score["killed"] / score["total"] if score["total"] else 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", choices=sorted(TARGETS))
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MUTATION_JOBS", "2")))
    parser.add_argument("--check", action="store_true", help="fail if a score fell")
    parser.add_argument("--update", action="store_true", help="record the scores")
    parser.add_argument("--force", action="store_true", help="with --update: even if lower")
    parser.add_argument("--report", type=Path, help="write every mutant's outcome here (JSON)")
    parser.add_argument("--verbose", action="store_true", help="print every mutant")
    parser.add_argument("--exclude", action="append", default=[],
                        help="leave out this test file (to measure without it)")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    modules = args.module or list(TARGETS)
    found = run(modules, max(1, args.jobs), args.verbose, tuple(args.exclude))
    recorded = json.loads(SCORE_FILE.read_text()) if SCORE_FILE.exists() else {"scores": {}}
    fell = []
    print(f"{'module':<26} {'killed/total':>13} {'score':>7} {'recorded':>9}")
    for name, score in found["scores"].items():
        before = recorded["scores"].get(name)
        was = f"{_fraction(before):.1%}" if before else "-"
        print(f"{name:<26} {score['killed']:>6}/{score['total']:<6} "
              f"{_fraction(score):>7.1%} {was:>9}")
        if before and _fraction(score) < _fraction(before) - 1e-12:
            fell.append(name)
    print("survivors:" if found["survivors"] else "no survivor")
    for ident in found["survivors"]:
        note = recorded.get("equivalent", {}).get(ident)
        print(f"  {ident}" + (f"  (equivalent: {note})" if note else ""))
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(found, indent=1))
    if args.update:
        if fell and not args.force:
            print(f"mutation: not recording lower scores for {fell} (use --force)")
            return 1
        recorded["scores"] |= found["scores"]
        SCORE_FILE.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        print(f"mutation: scores recorded in {SCORE_FILE.relative_to(ROOT)}")
    if args.check and fell:
        print(f"mutation: score fell below the recorded one for {', '.join(fell)}")
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
