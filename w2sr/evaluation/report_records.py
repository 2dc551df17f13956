"""The records of ``w2sr report``: every number it computes, as dataclasses. ``Report.to_json()``
(``dataclasses.asdict``) is report.json; the text, the table and the chart read the typed fields.

Layout of report.json (fields in this order): ``metric``, ``runs``, ``base``, ``reference``, ``min_gap``,
``allow_mismatch``, ``mismatches``, ``unchecked``, ``macro_benchmarks``, ``macro_left_out``, ``bootstrap``,
``benchmarks`` (``{benchmark: {run: Cell}}``), ``rgr`` / ``rgr_ci95`` / ``rgr_notes`` (``{run: {benchmark: ...}}``),
``notes``; then, only when they apply, ``fit_runs``, ``fit_sources``, ``fit_notes``, ``teacher``, ``seed_groups``,
``cost`` and ``cost_ratio``. Built by
:func:`w2sr.evaluation.compare.build_report`; exercised by ``pytest tests/evaluation/test_report.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from w2sr.evaluation.cost import ArmCosts

# sections written only when the report has them (absent from report.json otherwise, as before they existed)
OPTIONAL = ("fit_runs", "fit_sources", "fit_notes", "teacher", "seed_groups")


@dataclass
class RunSummary:
    """One compared run (or seed group) as report.json lists it."""

    name: str
    """The name the run is shown under (``name=path``, else its folder, else its model)."""
    results: str | list[str]
    """Its results.json (a seed group: one per seed, in seed order)."""
    model: str | list[str] | None
    """The evaluated model (``model`` of results.json)."""
    adapter: str | None
    """The adapter evaluated on the model, if any."""
    grader: str | None
    """The grader preset it was scored with."""
    sampling: dict[str, Any] | None
    """Its sampling settings as results.json has them."""


@dataclass
class Mismatch:
    """A setting the compared runs differ in."""

    field: str
    """``grader``, ``prompt``, ``quantization``, ``sampling`` or ``problem_ids``."""
    benchmark: str | None
    """The benchmark it concerns (None: the whole run)."""
    values: dict[str, Any]
    """Each run's value (for a dict setting, only the fields that differ)."""


@dataclass
class IdMismatch(Mismatch):
    """Runs scored on different problems of one benchmark."""

    not_in_every_run: list[str] = field(default_factory=list)
    """Up to 10 problem ids some run lacks (then ``... N more``)."""


@dataclass
class Cell:
    """One run on one benchmark (or the macro row)."""

    accuracy: float | None
    """The metric's value (a fraction); a seed group: the mean over its seeds."""
    ci95: list[float] | None
    """Its 95% interval: results.json's bootstrap over problems; the macro row's and a seed group's: the report's
    own (a seed group: pooled over seeds and problems)."""
    gain: float | None
    """accuracy minus the base's (None for the base itself or without a base)."""
    gain_ci95: list[float] | None
    """The paired 95% interval of the gain (one resample of the problems for both runs)."""


@dataclass
class Bootstrap:
    """How the report's own intervals were drawn."""

    seed: int
    """The seed (each benchmark gets ``benchmark_seed(seed, name)``)."""
    resamples: int
    """Resamples per interval."""
    paired_problems: dict[str, int]
    """Per benchmark, the number of problems every run with per-problem scores shares."""


@dataclass
class Teacher:
    """The teacher traces' accuracy from a ``w2sr verify --summary`` file."""

    summary: str
    """The summary file."""
    accuracy: float
    """Share of traces graded correct."""
    records: int | None
    """Number of traces."""


@dataclass
class FitSource:
    """Where a fit run's curves were read."""

    logger: str
    """``csv``, ``tensorboard``, ``mlflow`` or ``wandb``."""
    file: str
    """The log file (TensorBoard: the folder of event files; MLflow: the run folder of the file store)."""


@dataclass
class SeedStats:
    """One seed group on one benchmark."""

    mean: float | None
    """Mean of the seeds' accuracies."""
    sd: float | None
    """Sample standard deviation (n - 1) of the seeds' accuracies (0.0 for one seed)."""
    per_seed: list[float | None]
    """Each seed's accuracy, in seed order."""
    pooled_ci95: list[float] | None
    """95% interval of the mean over seeds, from the pooled bootstrap (see ``SeedGroups.pooling``)."""


@dataclass
class SeedRGR:
    """RGR of one seed group on one benchmark, seed by seed."""

    per_seed: list[float | None]
    """RGR of each seed (against the base and reference of the same seed position)."""
    mean: float | None
    """Mean of the defined per-seed values."""
    sd: float | None
    """Their sample standard deviation (n - 1)."""
    notes: list[str] = field(default_factory=list)
    """Why a seed's RGR is undefined (``seed 1: ...``)."""


@dataclass
class SeedGroup:
    """A run given as several seeds: ``name=[s0/results.json,s1/results.json,...]``."""

    results: list[str]
    """Its results.json files, in seed order."""
    benchmarks: dict[str, SeedStats]
    """Per benchmark (and ``macro``): mean, sd, per-seed values and the pooled interval."""
    rgr: dict[str, SeedRGR]
    """Per benchmark (and ``macro``): per-seed RGR (empty without base and reference)."""


@dataclass
class SeedGroups:
    """Every run with more than one seed, and how the seeds were pooled."""

    pooling: str
    """How the pooled intervals were drawn."""
    groups: dict[str, SeedGroup]
    """The seed groups by run name."""


@dataclass
class Report:
    """Every number of ``w2sr report``; ``to_json()`` is report.json."""

    metric: str
    """``avg@n``, ``pass@K`` or ``maj@K``."""
    runs: list[RunSummary]
    """The compared runs, in the order given."""
    base: str | None
    """The base run's name (gains and RGR are measured from it)."""
    reference: str | None
    """The reference run's name (RGR's denominator)."""
    min_gap: float
    """RGR is undefined when the reference gains at most this over the base."""
    allow_mismatch: bool
    """Whether runs evaluated differently were compared on purpose."""
    mismatches: list[Mismatch]
    """The settings the runs differ in."""
    unchecked: list[str]
    """Settings some run does not record (not compared)."""
    macro_benchmarks: list[str]
    """The benchmarks the macro row averages (those every run has)."""
    macro_left_out: dict[str, list[str]]
    """Benchmarks left out of the macro row, with the runs that lack them."""
    bootstrap: Bootstrap
    """How the report's intervals were drawn."""
    benchmarks: dict[str, dict[str, Cell]]
    """``{benchmark or macro: {run: Cell}}``."""
    rgr: dict[str, dict[str, float | None]]
    """``{run: {benchmark: RGR}}`` for every run but the base and the reference (null: n/a or undefined)."""
    rgr_ci95: dict[str, dict[str, list[float] | None]]
    """The paired 95% interval of each RGR."""
    rgr_notes: dict[str, dict[str, str]]
    """Why an RGR is null."""
    notes: list[str]
    """Other caveats (e.g. runs without per-problem scores: no paired interval)."""
    fit_runs: dict[str, dict[str, list[list[float]]]] | None = None
    """``{fit run: {curve: [[step, value], ...]}}`` from ``--fit_runs`` (``val/reasoning_acc``, ``train/loss``,
    ``val/loss``)."""
    fit_sources: dict[str, FitSource] | None = None
    """Which logger wrote each fit run's curves, and the file read."""
    fit_notes: dict[str, dict[str, str]] | None = None
    """``{fit run: {curve: why it is empty}}`` (only runs with an empty curve)."""
    teacher: Teacher | None = None
    """The teacher traces' accuracy (``--teacher``)."""
    seed_groups: SeedGroups | None = None
    """Per-seed numbers of the runs given as seed groups."""
    arm_costs: ArmCosts | None = field(default=None, repr=False)
    """The cost of each arm and their ratio (:func:`w2sr.evaluation.cost.arm_costs`); report.json holds
    ``ArmCosts.to_report()``: ``cost`` (per arm) and ``cost_ratio`` (W2SR / RL per pair)."""

    @property
    def run_names(self) -> list[str]:
        return [run.name for run in self.runs]

    def to_json(self) -> dict[str, Any]:
        """report.json: ``dataclasses.asdict``, without the optional sections the report does not have."""
        data = asdict(self)
        for name in OPTIONAL:
            if data[name] is None:
                del data[name]
        del data["arm_costs"]  # written in the cost module's own shape, under ``cost`` and ``cost_ratio``
        if self.arm_costs is not None:
            data.update(self.arm_costs.to_report())
        return data
