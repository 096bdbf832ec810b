"""Solver choice, time limit, and the true status, bound and gap of a PuLP problem (no torch).

HiGHS (through ``highspy``) is used when it can be imported, CBC otherwise; ``--solver`` picks one.
PuLP maps a HiGHS time-limit stop to "Optimal", and CBC's "stopped on time" to status 1, so the
status here is read from the solver itself: HiGHS's model status and info, CBC's log summary.
A result is called ``optimal`` only when the solver proved it (within the gap asked for).

Output: HiGHS prints its banner ("Running HiGHS ...") from C++ straight to file descriptor 1 the first
time a ``highspy.Highs`` object is created in a process, before any option can be set, so
``sys.stdout`` redirection cannot catch it.  :func:`_absorb_highs_banner` creates that first object
with fd 1 pointed at /dev/null (at stderr when solver logs are on), so ``--json`` output stays one JSON
document.  Solver logs are off unless :func:`set_solver_log` turned them on (``--verbose``); they then go
to stderr, never to stdout.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

import pulp

from melplan.core.errors import InputError, SolverError

SOLVERS = ("highs", "cbc")
_LOG = {"on": False}
_BANNER = {"done": False}
_FD_LOCK = threading.Lock()


def set_solver_log(on: bool) -> None:
    """Show the solvers' own logs (on stderr) from now on in this process, or hide them (the default)."""
    _LOG["on"] = bool(on)


def solver_log_on() -> bool:
    return _LOG["on"]


def _flush_c_stdio() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # pragma: no cover - no C library to flush
        pass


@contextlib.contextmanager
def stdout_fd_to(target: str):
    """Point file descriptor 1 at ``"stderr"`` or ``"devnull"`` for the block (C code included), then back.

    Python's and C's stdout buffers are flushed on both sides so nothing written before or inside
    the block lands on the wrong side.  Process-wide: keep the block short.
    """
    with _FD_LOCK:
        _flush_python(sys.stdout)
        _flush_c_stdio()
        try:
            saved = os.dup(1)
        except OSError:  # no fd 1 at all: nothing can reach stdout anyway
            yield
            return
        try:
            try:
                if target == "stderr":
                    _flush_python(sys.stderr)
                    os.dup2(2, 1)
                else:
                    null = os.open(os.devnull, os.O_WRONLY)
                    try:
                        os.dup2(null, 1)
                    finally:
                        os.close(null)
            except OSError:  # fd 2 closed: fall back to discarding
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 1)
                os.close(null)
            try:
                yield
            finally:
                _flush_python(sys.stdout)
                _flush_c_stdio()
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def _flush_python(stream) -> None:
    if stream is not None:
        with contextlib.suppress(Exception):
            stream.flush()


def _absorb_highs_banner() -> None:
    """Create the process's first ``highspy.Highs`` with fd 1 redirected: it alone prints the banner."""
    if _BANNER["done"]:
        return
    import highspy

    with stdout_fd_to("stderr" if _LOG["on"] else "devnull"):
        highspy.Highs()
    _BANNER["done"] = True


_NAMES = {"highs": "HiGHS", "cbc": "CBC"}


@dataclass(frozen=True)
class SolveResult:
    """What a solve proved.

    ``status``: ``optimal`` (proved within the gap tolerances), ``time_limit`` (stopped by the
    limit; ``has_solution`` says whether an incumbent exists), ``infeasible``, ``unbounded`` or
    ``error``.  ``objective`` and ``bound`` are in the problem's own units and sense (for a
    maximisation ``bound >= objective``); ``gap`` is the solver's relative gap when known.
    """

    solver: str
    status: str
    has_solution: bool
    objective: float | None
    bound: float | None
    gap: float | None
    wall_s: float
    time_limit_s: float
    nodes: int | None = None

    @property
    def optimal(self) -> bool:
        return self.status == "optimal"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.solver,
            "status": self.status,
            "gap": self.gap,
            "wall_s": round(self.wall_s, 4),
            "time_limit_s": self.time_limit_s,
        }


def highs_available() -> bool:
    try:
        import highspy  # noqa: F401
    except ImportError:
        return False
    return True


def _cbc_command(**kwargs: Any):
    """COIN_CMD when a ``cbc`` binary is installed, else the CBC bundled with PuLP (or None)."""
    import warnings

    try:
        cmd = pulp.COIN_CMD(**kwargs)
        if cmd.available():
            return cmd
    except Exception:  # pragma: no cover - depends on the installation
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            cmd = pulp.PULP_CBC_CMD(**kwargs)
        except Exception:  # pragma: no cover
            return None
    return cmd if cmd.available() else None


def cbc_available() -> bool:
    return _cbc_command(msg=False) is not None


def choose_solver(name: str | None) -> str:
    """``"highs"`` or ``"cbc"``: the one asked for, else HiGHS when importable, else CBC.

    Raises InputError for an unknown name, SolverError when the one asked for (or any) is missing.
    """
    if name is not None:
        key = name.lower()
        if key not in SOLVERS:
            raise InputError(f"unknown solver {name!r}", field="--solver", fix="use 'highs' or 'cbc'")
        ok = highs_available() if key == "highs" else cbc_available()
        if not ok:
            other = "cbc" if key == "highs" else "highs"
            raise SolverError(
                f"the {_NAMES[key]} solver is not available here",
                field="--solver",
                fix=f"install it (pip install {'highspy' if key == 'highs' else 'pulp'}) or use --solver {other}",
            )
        return key
    if highs_available():
        return "highs"
    if cbc_available():
        return "cbc"
    raise SolverError("no MILP solver is available", fix="pip install highspy (or a PuLP with its bundled CBC)")


def solve(
    problem: pulp.LpProblem,
    *,
    solver: str,
    time_limit_s: float,
    gap_rel: float = 1e-4,
    gap_abs: float = 1e-9,
    threads: int | None = None,
) -> SolveResult:
    """Solve ``problem`` in place (variable values are set) and report what was proved.

    ``time_limit_s`` is always passed to the solver.  Raises SolverError when the solver itself
    fails (not for infeasible or time-limited problems: those are statuses).
    """
    time_limit_s = max(0.01, float(time_limit_s))
    start = time.perf_counter()
    if solver == "highs":
        result = _solve_highs(problem, time_limit_s, gap_rel, gap_abs, threads, start)
    elif solver == "cbc":
        result = _solve_cbc(problem, time_limit_s, gap_rel, gap_abs, threads, start)
    else:
        raise ValueError(f"unknown solver {solver!r}")
    return result


def _constant(problem: pulp.LpProblem) -> float:
    return float(problem.objective.constant) if problem.objective is not None else 0.0


def _solve_highs(problem, time_limit_s, gap_rel, gap_abs, threads, start) -> SolveResult:
    import highspy

    _absorb_highs_banner()
    options: dict[str, Any] = {"random_seed": 0}
    log = _LOG["on"]
    cmd = pulp.HiGHS(msg=log, timeLimit=time_limit_s, gapRel=gap_rel, gapAbs=gap_abs, threads=threads, **options)
    try:
        with stdout_fd_to("stderr") if log else contextlib.nullcontext():
            problem.solve(cmd)
    except pulp.PulpSolverError as exc:
        raise SolverError(f"HiGHS failed: {exc}", fix="try --solver cbc") from None
    h = problem.solverModel
    status = h.getModelStatus()
    info = h.getInfo()
    S = highspy.HighsModelStatus
    has_solution = info.primal_solution_status == 2
    sign = -1.0 if problem.sense == pulp.LpMaximize else 1.0
    const = _constant(problem)
    objective = sign * info.objective_function_value + const if has_solution else None
    integer = any(v.cat == pulp.LpInteger for v in problem.variables())
    if integer:
        dual = info.mip_dual_bound
        bound = sign * dual + const if dual == dual and abs(dual) < 1e300 else None
        gap = info.mip_gap if has_solution and abs(info.mip_gap) < 1e300 else None
    else:
        bound = objective if status == S.kOptimal else None
        gap = 0.0 if status == S.kOptimal else None
    if status == S.kOptimal:
        name = "optimal"
    elif status in (S.kTimeLimit, S.kIterationLimit, S.kInterrupt, S.kSolutionLimit):
        name = "time_limit"
    elif status in (S.kInfeasible,):
        name = "infeasible"
    elif status in (S.kUnbounded, S.kUnboundedOrInfeasible):
        name = "unbounded"
    else:
        name = "error"
    if name == "optimal" and bound is None:
        bound = objective
    return SolveResult(
        "HiGHS",
        name,
        has_solution,
        objective,
        bound,
        gap,
        time.perf_counter() - start,
        time_limit_s,
        int(info.mip_node_count) if integer else None,
    )


_CBC_RESULT = re.compile(r"^Result - (.+)$", re.M)
_CBC_OBJ = re.compile(r"^Objective value:\s+(\S+)", re.M)
_CBC_BOUND = re.compile(r"^(?:Upper|Lower) bound:\s+(\S+)", re.M)
_CBC_NODES = re.compile(r"^Enumerated nodes:\s+(\d+)", re.M)


def _solve_cbc(problem, time_limit_s, gap_rel, gap_abs, threads, start) -> SolveResult:
    fd, log = tempfile.mkstemp(prefix="melplan-cbc-", suffix=".log")
    os.close(fd)
    try:
        cmd = _cbc_command(
            msg=False,
            timeLimit=time_limit_s,
            gapRel=gap_rel,
            gapAbs=gap_abs,
            threads=threads,
            logPath=log,
            options=["randomSeed 1", "randomCbcSeed 1"],
        )
        if cmd is None:
            raise SolverError("the CBC solver is not available here", field="--solver", fix="use --solver highs")
        try:
            problem.solve(cmd)
        except pulp.PulpSolverError as exc:
            raise SolverError(f"CBC failed: {exc}", fix="try --solver highs") from None
        if _LOG["on"]:
            with open(log, encoding="utf-8", errors="replace") as fh:
                sys.stderr.write(fh.read())
        with open(log, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    finally:
        try:
            os.unlink(log)
        except OSError:
            pass
    result = _CBC_RESULT.search(text)
    summary = result.group(1).strip().lower() if result else ""
    has_solution = problem.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)
    const = _constant(problem)
    objective = float(pulp.value(problem.objective)) if has_solution else None
    bound = None
    m = _CBC_BOUND.search(text)
    if m:
        try:
            bound = float(m.group(1)) + const
        except ValueError:
            bound = None
    if "optimal" in summary and problem.sol_status == pulp.LpSolutionOptimal:
        name = "optimal"
        bound = objective if bound is None else bound
    elif "infeasible" in summary or problem.status == pulp.LpStatusInfeasible:
        name = "infeasible"
    elif "unbounded" in summary or problem.status == pulp.LpStatusUnbounded:
        name = "unbounded"
    elif "time" in summary or "stopped" in summary or problem.sol_status == pulp.LpSolutionIntegerFeasible:
        name = "time_limit"
    elif problem.sol_status == pulp.LpSolutionOptimal:
        name = "optimal"
        bound = objective if bound is None else bound
    else:
        name = "error"
    gap = None
    if objective is not None and bound is not None:
        gap = abs(bound - objective) / max(abs(objective), 1e-10)
    nodes = _CBC_NODES.search(text)
    return SolveResult(
        "CBC",
        name,
        has_solution,
        objective,
        bound,
        gap,
        time.perf_counter() - start,
        time_limit_s,
        int(nodes.group(1)) if nodes else None,
    )
