"""Every GPU measurement the project still needs, in one device call with one time budget.

Run on the lent GPU machine as `bash bench/gpu_session.sh` (which installs the carried wheels
first; see bench/device_wheels.sh). Phases, in priority order, share `--budget` seconds (default
510: the device allows 600 s a command, and packing plus the wheels' install need the rest):

  correctness  pytest: Triton kernels and decode graphs against the PyTorch reference (bf16
               Llama shapes among them) and the engine tests, minus the two kinds that cannot
               run there (the interpreter test refuses Triton 3.6 with NumPy 2.5; the CLI tests
               reset PYTHONPATH and lose the wheels)
  kernels      bench/engine_kernels.py: attention kernels' bandwidth vs a copy and torch SDPA
  decode       bench/engine_step.py --parts decode: one decode step vs the roofline, with the
               decode graphs and eagerly
  profile      python -m engine.profile (the full grid, the device's own hardware name), then
               python -m apcsim.calibration on it
  validate     as many runs of the validation suite as fit, one process each, each recorded as
               a bundle (engine.recorded), against the profile just measured (or the committed
               one of this hardware)

A phase starts only if at least its `need` seconds of the budget are left, and runs under a
timeout of what is left (at most its `cap`); a phase that fails or times out does not stop the
next. After each phase its results are packed into $OUT (or --out), at most 8 files, none in a
folder: session.json (every phase's command, status, times and the budget arithmetic),
session.log (every command's output), summary.md (the table printed last), engine_kernels.json,
engine_step.json, profile.tar.gz, validation.tar.gz.

`--dry-run` runs the same schedule on any machine with stand-in commands that write files
shaped like the real ones; its clock charges each finished stand-in its phase's estimated
seconds, so it shows what a real session would start within the budget (tests/engine/test_gpu_session.py).
Standard library only: it must run before anything is known about the machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FILES = 8  # the device tool brings back at most 8 files from $OUT

# Validation runs of suite=h100, in the order a short session should get to them: one of each
# workload first, the preempting run early, then the rest of the suite. The GMI runs read a
# trace from ../shared, which does not travel to the device: left out.
VALIDATION_ORDER = (
    "shared_prefix_1k-lru-16", "multiturn-lru-16", "rag-cost_aware-16", "preempt_small_cache-lru-16",
    "shared_fraction_0.5-lfu-64", "shared_prefix_4k-lru-16", "mooncake-lru-16", "multiturn-cost_aware-64",
)
# Seconds a validation run takes on the GPU: the suite's own estimates (apcsim/conf/validation/
# h100.yaml: about a minute, about four for Mooncake), not measurements.
RUN_ESTIMATE_S = {"mooncake": 240.0}
DEFAULT_RUN_ESTIMATE_S = 75.0


@dataclass(frozen=True)
class Phase:
    name: str
    need_s: float  # started only with at least this much of the budget left
    cap_s: float  # its timeout, or what is left if less
    estimate_s: float  # what the dry run's clock charges for it (an estimate, not a measurement)


PHASES = (
    Phase("correctness", need_s=45, cap_s=150, estimate_s=90),
    Phase("kernels", need_s=30, cap_s=90, estimate_s=45),
    Phase("decode", need_s=40, cap_s=120, estimate_s=70),
    Phase("profile", need_s=150, cap_s=260, estimate_s=160),  # engine.profile estimates 115 s of device time
)


def run_estimate_s(name: str) -> float:
    return RUN_ESTIMATE_S.get(name.split("-")[0], DEFAULT_RUN_ESTIMATE_S)


class Clock:
    """Seconds of the budget used: wall time since the session started (the wrapper's start, so
    the wheels' install counts), plus, in a dry run, the estimate of every finished stand-in."""

    def __init__(self, budget_s: float, t0: float, dry: bool) -> None:
        self.budget_s, self.t0, self.dry = budget_s, t0, dry
        self.charged = 0.0

    def used(self) -> float:
        return time.time() - self.t0 + self.charged

    def left(self) -> float:
        return self.budget_s - self.used()


def plan_start(left_s: float, need_s: float, cap_s: float) -> tuple[bool, float]:
    """(start?, timeout): a phase starts with at least `need_s` left, and may run for what is
    left, at most `cap_s`."""
    if left_s < need_s:
        return False, 0.0
    return True, min(cap_s, left_s)


@dataclass
class Session:
    out: Path
    work: Path
    clock: Clock
    py: str
    dry: bool
    hardware: str
    device_name: str
    hang: set[str] = field(default_factory=set)  # dry run: stand-ins that hang (timeout tests)
    phases: list[dict] = field(default_factory=list)
    # file in out -> what it holds; these two are written from the start
    packed: dict[str, str] = field(default_factory=lambda: {"session.json": "this file",
                                                            "session.log": "every command's output"})

    @property
    def log(self) -> Path:
        return self.out / "session.log"

    def say(self, text: str) -> None:
        print(f"gpu_session [{self.clock.used():5.0f}s of {self.clock.budget_s:.0f}s] {text}", flush=True)

    # -- running ----------------------------------------------------------------------------------
    def run(self, name: str, argv: list[str], timeout_s: float, stand_in: list[str]) -> dict:
        """Run one command (its stand-in in a dry run) with its output appended to session.log;
        on timeout its whole process group is killed."""
        cmd = [self.py, str(ROOT / "bench" / "gpu_session.py"), "--stand-in", *stand_in] if self.dry else argv
        if self.dry and name in self.hang:
            cmd = [self.py, "-c", "import time; time.sleep(600)"]
        t = time.time()
        with self.log.open("a") as log:
            log.write(f"\n===== {name}: {' '.join(argv)}{'  (dry run: stand-in)' if self.dry else ''}\n")
            log.flush()
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    env=child_env())
            try:
                rc = proc.wait(timeout=max(timeout_s, 0.1))
                status = "ok" if rc == 0 else "failed"
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc, status = None, "timeout"
            log.write(f"===== {name}: {status} (rc={rc}) after {time.time() - t:.1f}s\n")
        return {"command": argv, "status": status, "rc": rc, "wall_s": round(time.time() - t, 1)}

    def phase(self, p: Phase, steps) -> dict | None:
        """Run a phase's commands (a list of (argv, stand-in args)) if the budget allows; record it."""
        left = self.clock.left()
        start, timeout = plan_start(left, p.need_s, p.cap_s)
        rec = {"phase": p.name, "need_s": p.need_s, "cap_s": p.cap_s, "left_before_s": round(left, 1)}
        if not start:
            rec.update(status="skipped", reason=f"{left:.0f}s left < {p.need_s:.0f}s needed")
            self.phases.append(rec)
            self.say(f"{p.name}: skipped ({rec['reason']})")
            return None
        rec.update(started_at_s=round(self.clock.used(), 1), timeout_s=round(timeout, 1), commands=[])
        self.say(f"{p.name}: started (timeout {timeout:.0f}s)")
        t = time.time()
        status = "ok"
        for argv, stand_in in steps:
            left_now = timeout - (time.time() - t)
            r = self.run(p.name, argv, left_now, stand_in)
            rec["commands"].append(r)
            if r["status"] != "ok":
                status = r["status"]
                break
        rec.update(status=status, wall_s=round(time.time() - t, 1))
        if self.dry and status == "ok":
            self.clock.charged += max(0.0, p.estimate_s - (time.time() - t))
        self.phases.append(rec)
        self.say(f"{p.name}: {status} in {rec['wall_s']:.0f}s")
        return rec

    # -- packing ----------------------------------------------------------------------------------
    def put(self, name: str, what: str, src: Path | None = None, tar_of: list[tuple[Path, str]] | None = None) -> None:
        """Write one result file at the top of out: a copy of `src`, or a tar.gz of (path, name in
        the archive) pairs. Never more than MAX_FILES files."""
        if name not in self.packed and len(self.packed) >= MAX_FILES:
            raise RuntimeError(f"more than {MAX_FILES} result files: {sorted(self.packed)} + {name}")
        dst = self.out / name
        tmp = self.out / f".{name}.tmp"
        if src is not None:
            if not src.is_file():
                return
            shutil.copyfile(src, tmp)
        else:
            with tarfile.open(tmp, "w:gz") as tar:
                for path, arc in tar_of or []:
                    if path.exists():
                        tar.add(path, arcname=arc)
        os.replace(tmp, dst)
        self.packed[name] = what

    def write_session(self, done: bool) -> None:
        info = {
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "dry_run": self.dry, "device_name": self.device_name, "hardware": self.hardware,
            "git_commit": git_commit(), "python": sys.version.split()[0],
            "budget_s": self.clock.budget_s, "used_s": round(self.clock.used(), 1),
            "left_s": round(self.clock.left(), 1), "complete": done,
            "phases": self.phases, "files": {**self.packed},
        }
        tmp = self.out / ".session.json.tmp"
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, self.out / "session.json")


def child_env() -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the real kernels, compiled for the GPU
    env["PYTHONUNBUFFERED"] = "1"
    return env


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def detect_device() -> tuple[str, str]:
    """(device name from nvidia-smi, the profile's hardware name: h100, h200, ...)."""
    try:
        name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "no nvidia-smi", "unknown"
    try:
        from engine.profile import gpu_hardware_name  # needs the carried wheels (hydra)
    except ImportError:
        return name, "unknown"
    return name, gpu_hardware_name(name)


def nominal_tbps(hardware: str) -> float | None:
    """The spec-sheet bandwidth of conf/hardware/<hardware>.yaml, in TB/s."""
    p = ROOT / "apcsim" / "conf" / "hardware" / f"{hardware}.yaml"
    m = re.search(r"^mem_bw_gbps:\s*([0-9.]+)", p.read_text(), re.M) if p.is_file() else None
    return float(m.group(1)) / 1000 if m else None


# -- the phases ------------------------------------------------------------------------------------
def correctness_steps(s: Session) -> list:
    argv = [s.py, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "tests/engine/test_kernels.py",
            "tests/engine/test_decode_graphs.py", "tests/engine/test_engine.py", "-k", "not interpreter and not cli"]
    return [(argv, ["correctness"])]


def kernels_steps(s: Session) -> list:
    out = s.work / "engine_kernels.json"
    return [([s.py, "bench/engine_kernels.py", "--out", str(out)], ["json", str(out)])]


def decode_steps(s: Session) -> list:
    out = s.work / "engine_step.json"
    argv = [s.py, "bench/engine_step.py", "--parts", "decode", "--out", str(out)]
    if (tbps := nominal_tbps(s.hardware)) is not None:
        argv += ["--nominal-tbps", f"{tbps:g}"]
    return [(argv, ["json", str(out)])]


def profile_csv(s: Session) -> Path:
    return s.work / "profile" / s.hardware / "llama3_8b.csv"


def profile_steps(s: Session) -> list:
    csv = profile_csv(s)
    prof = [s.py, "-m", "engine.profile", "model=llama3_8b", f"hardware_name={s.hardware}", f"out={csv}"]
    cal = [s.py, "-m", "apcsim.calibration", f"hardware={s.hardware}", "model=llama3_8b", f"profile={csv}",
           f"hydra.run.dir={s.work / 'calibration'}"]
    return [(prof, ["profile", str(csv)]), (cal, ["calibration", str(s.work / "calibration")])]


def validation_profile(s: Session) -> Path | None:
    """The profile measured in this session, else the committed one of this hardware."""
    for p in (profile_csv(s), ROOT / "apcsim" / "profiles" / s.hardware / "llama3_8b.csv"):
        if p.is_file():
            return p
    return None


def suite_run_names() -> list[str]:
    """Every run of apcsim/conf/validation/h100.yaml, read without a YAML parser: the names are
    workload x policy x block size, then the extra runs, as engine.validate_suite builds them."""
    text = (ROOT / "apcsim" / "conf" / "validation" / "h100.yaml").read_text()
    policies = re.search(r"^policies:\s*\[([^\]]*)\]", text, re.M).group(1).replace(" ", "").split(",")
    sizes = re.search(r"^block_sizes:\s*\[([^\]]*)\]", text, re.M).group(1).replace(" ", "").split(",")
    section = lambda name: re.search(rf"^{name}:\n((?:[ #].*\n|\n)*)", text, re.M).group(1)
    workloads = re.findall(r"^  ([A-Za-z0-9_.]+):", section("workloads"), re.M)
    extra = re.findall(r"^  ([A-Za-z0-9_.-]+):", section("extra_runs"), re.M)
    return [f"{w}-{p}-{b}" for w in workloads for p in policies for b in sizes] + extra


def ordered_runs(names: list[str]) -> list[str]:
    """VALIDATION_ORDER first, then the suite's other runs; never the GMI runs (trace not carried)."""
    rest = [n for n in names if n not in VALIDATION_ORDER and not n.startswith("gmi-")]
    return [n for n in VALIDATION_ORDER if n in names] + rest


def validate_phase(s: Session, runs: list[str]) -> None:
    profile = validation_profile(s)
    if profile is None:
        s.phases.append({"phase": "validate", "status": "skipped",
                         "reason": f"no profile of {s.hardware}/llama3_8b (measured or committed)"})
        s.say("validate: skipped (no profile)")
        return
    for i, name in enumerate(runs):
        left = s.clock.left()
        if left < min(run_estimate_s(n) for n in runs[i:]):
            rest = runs[i:]
            s.phases.append({"phase": "validate", "status": "skipped", "runs": rest, "left_before_s": round(left, 1),
                             "reason": f"{len(rest)} runs not started: {left:.0f}s left < "
                                       f"{min(map(run_estimate_s, rest)):.0f}s needed by the shortest"})
            s.say(f"validate: {s.phases[-1]['reason']}")
            break
        est = run_estimate_s(name)
        argv = [s.py, "-m", "engine.validate_suite", "suite=h100", f"only={name}", f"out={s.work / 'validation'}",
                f"profile={profile}", f"record={s.work / 'bundles'}", f"set=hardware={s.hardware}"]
        rec = s.phase(Phase(f"validate:{name}", need_s=est, cap_s=s.clock.budget_s, estimate_s=est),
                      [(argv, ["validate", str(s.work / "validation"), str(s.work / "bundles"), name])])
        if rec is None:
            continue  # a shorter run further down may still fit
        pack_validation(s)
        s.write_session(done=False)


def pack_validation(s: Session) -> None:
    v, b = s.work / "validation", s.work / "bundles"
    files = [(v / "table.md", "table.md"), (v / "suite.csv", "suite.csv")]
    for run in sorted(p for p in v.iterdir() if p.is_dir()) if v.is_dir() else []:
        for f in ("validation.json", "validation_info.json", "overrides.json"):
            files.append((run / f, f"runs/{run.name}/{f}"))
    if b.is_dir():
        files.append((b, "bundles"))
    s.put("validation.tar.gz", "the validation table, each run's validation.json and info, its recorded bundle",
          tar_of=files)


def pack_profile(s: Session) -> None:
    csv = profile_csv(s)
    s.put("profile.tar.gz", f"apcsim/profiles/{s.hardware}/llama3_8b.csv and .meta.json, calibration outputs",
          tar_of=[(csv, csv.name), (csv.with_suffix(".meta.json"), csv.with_suffix(".meta.json").name),
                  (s.work / "calibration", "calibration")])


# -- the summary -----------------------------------------------------------------------------------
def goals_met(path: Path) -> str:
    """'k/n goals met' over every `goal_met` in a benchmark's JSON (partial files included)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return "no results"
    found = []

    def walk(x):
        if isinstance(x, dict):
            if "goal_met" in x and x["goal_met"] is not None:
                found.append(bool(x["goal_met"]))
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(data)
    done = "" if data.get("complete", True) else " (partial)"
    return f"{sum(found)}/{len(found)} goals met{done}"


def phase_result(s: Session, rec: dict) -> str:
    name = rec["phase"]
    if rec["status"] == "skipped":
        return rec.get("reason", "")
    if name == "correctness":
        m = None
        with s.log.open() as f:
            text = f.read()
        block = text.rsplit("===== correctness:", 2)
        if len(block) == 3:
            m = re.findall(r"^=*\s*(\d+ \w+.*?) in [0-9.]+s", block[1], re.M)
        return m[-1] if m else "see session.log"
    if name == "kernels":
        return goals_met(s.work / "engine_kernels.json")
    if name == "decode":
        return goals_met(s.work / "engine_step.json")
    if name == "profile":
        meta = profile_csv(s).with_suffix(".meta.json")
        try:
            m = json.loads(meta.read_text())
            return f"{m['rows']} rows in {m['wall_s']:.0f}s"
        except (OSError, ValueError, KeyError):
            return "no profile"
    if name.startswith("validate:"):
        try:
            v = json.loads((s.work / "validation" / name.split(":", 1)[1] / "validation.json").read_text())
        except (OSError, ValueError):
            return "no table"
        ok = sum(1 for x in v.values() if x["within_goal"])
        return f"{ok}/{len(v)} metrics within goal"
    return ""


def summary_table(s: Session) -> str:
    lines = [f"GPU session on {s.device_name} ({s.hardware}), commit {git_commit()}"
             f"{' - DRY RUN, stand-in commands' if s.dry else ''}: "
             f"{s.clock.used():.0f}s of a {s.clock.budget_s:.0f}s budget", "",
             "| phase | status | wall s | result |", "|---|---|---|---|"]
    for rec in s.phases:
        lines.append(f"| {rec['phase']} | {rec['status']} | {rec.get('wall_s', '-')} | {phase_result(s, rec)} |")
    lines += ["", "files: " + ", ".join(sorted(s.packed))]
    return "\n".join(lines) + "\n"


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=float(os.environ.get("GPU_SESSION_BUDGET_S", 510)),
                   help="seconds for every phase together (default 510)")
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "gpu_results"))
    p.add_argument("--work", default=None, help="scratch folder (default: a fresh one under /tmp)")
    p.add_argument("--phases", default="correctness,kernels,decode,profile,validate",
                   help="comma-separated subset, in this order")
    p.add_argument("--runs", default=None, help="validation runs (comma-separated names of suite=h100)")
    p.add_argument("--dry-run", action="store_true", help="stand-in commands, estimated durations")
    p.add_argument("--hardware", default=None, help="the hardware name (default: from nvidia-smi; dry run: h100)")
    p.add_argument("--hang", default="", help="dry run: these phases' stand-ins hang (tests the timeouts)")
    p.add_argument("--cap", action="append", default=[], metavar="PHASE=S", help="override a phase's cap")
    p.add_argument("--stand-in", nargs=argparse.REMAINDER, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.stand_in is not None:
        return stand_in(a.stand_in)
    known = [p.name for p in PHASES] + ["validate"]
    phases = [x for x in a.phases.split(",") if x]
    if bad := [x for x in phases if x not in known]:
        print(f"gpu_session: error: unknown phase {bad[0]!r} (have: {', '.join(known)})", file=sys.stderr)
        return 2
    caps = {}
    for c in a.cap:
        k, _, v = c.partition("=")
        caps[k] = float(v)
    t0 = float(os.environ.get("GPU_SESSION_T0", time.time()))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if [p for p in out.iterdir() if not p.name.startswith(".")]:
        print(f"gpu_session: error: {out} is not empty (results would mix with older ones)", file=sys.stderr)
        return 2
    work = Path(a.work) if a.work else Path(f"/tmp/gpu_session_{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    if a.dry_run:
        device, hardware = "dry run (no GPU used)", a.hardware or "h100"
    else:
        device, hardware = detect_device()
        hardware = a.hardware or hardware
    names = suite_run_names()
    runs = a.runs.split(",") if a.runs else ordered_runs(names)
    if bad := [r for r in runs if r not in names]:
        print(f"gpu_session: error: no run {bad[0]!r} in suite=h100", file=sys.stderr)
        return 2
    s = Session(out=out, work=work, clock=Clock(a.budget, t0, a.dry_run), py=sys.executable,
                dry=a.dry_run, hardware=hardware, device_name=device, hang=set(a.hang.split(",")) - {""})
    s.log.touch()
    s.write_session(done=False)
    s.say(f"device {device} ({hardware}); budget {a.budget:.0f}s; phases {', '.join(phases)}; results in {out}")
    builders = {"correctness": correctness_steps, "kernels": kernels_steps, "decode": decode_steps,
                "profile": profile_steps}
    packers = {"kernels": lambda: s.put("engine_kernels.json", "bench/engine_kernels.py", s.work / "engine_kernels.json"),
               "decode": lambda: s.put("engine_step.json", "bench/engine_step.py --parts decode", s.work / "engine_step.json"),
               "profile": lambda: pack_profile(s)}
    for p in PHASES:
        if p.name not in phases:
            continue
        if p.name == "profile" and hardware == "unknown":
            s.phases.append({"phase": "profile", "status": "skipped", "reason": "hardware name unknown"})
            continue
        ph = Phase(p.name, p.need_s, caps.get(p.name, p.cap_s), p.estimate_s)
        if s.phase(ph, builders[p.name](s)) is not None and p.name in packers:
            packers[p.name]()
        s.write_session(done=False)
    if "validate" in phases:
        validate_phase(s, runs)
    s.packed["summary.md"] = "the table printed last"
    table = summary_table(s)
    (out / "summary.md").write_text(table)
    s.write_session(done=True)
    print(table, end="")
    return 0


# -- stand-ins (dry run) ---------------------------------------------------------------------------
def stand_in(args: list[str]) -> int:
    """Write what the real command would, shaped alike, with made-up numbers marked as such."""
    kind, rest = args[0], args[1:]
    note = {"stand_in": True, "note": "dry run: no measurement"}
    if kind == "correctness":
        print("3 passed in 0.01s")
    elif kind == "json":
        Path(rest[0]).write_text(json.dumps({**note, "complete": True, "case": {"goal_met": True}}) + "\n")
    elif kind == "profile":
        csv = Path(rest[0])
        csv.parent.mkdir(parents=True, exist_ok=True)
        csv.write_text("hardware,model,op,time_ms_median\n")
        csv.with_suffix(".meta.json").write_text(json.dumps({**note, "rows": 0, "wall_s": 0.0}) + "\n")
    elif kind == "calibration":
        Path(rest[0]).mkdir(parents=True, exist_ok=True)
        (Path(rest[0]) / "calibration.json").write_text(json.dumps(note) + "\n")
    elif kind == "validate":
        vdir, bdir, name = Path(rest[0]), Path(rest[1]), rest[2]
        (vdir / name).mkdir(parents=True, exist_ok=True)
        (vdir / name / "validation.json").write_text(json.dumps({"m": {"within_goal": True}}) + "\n")
        (vdir / name / "validation_info.json").write_text(json.dumps(note) + "\n")
        (vdir / "table.md").write_text("| run |\n")
        (bdir / name).mkdir(parents=True, exist_ok=True)
        (bdir / name / "bundle.json").write_text(json.dumps(note) + "\n")
    else:
        print(f"unknown stand-in {kind}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
