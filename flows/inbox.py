"""``score-inbox`` flow: score every new file of an inbox folder once, with the registry's champion.

    python -m flows.inbox --inbox data/inbox --outbox data/outbox --once
    python -m flows.inbox --inbox data/inbox --outbox data/outbox --interval 60     # serve on a schedule

Reports go to the outbox, mirroring the inbox's folders (``<outbox>/<folder>/<stem>.anomalies.csv`` and
``<stem>.summary.json``); each file's path, size, sha256, model version, report, status and times are
recorded in the SQLite manifest ``<outbox>/manifest.sqlite3`` (see ``pipeline/inbox/manifest.py``), so a file
is scored once even when runs overlap or one is killed. A file that keeps failing is moved to
``<outbox>/quarantine`` with ``<name>.reason.txt`` after ``--max-attempts``.
"""

# No ``from __future__ import annotations``: the flow's annotations stay real types for Prefect's parameter
# validation in a deployment's flow run (with strings, a served run once failed: InboxConfig not defined).
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.cli import EXIT_INPUT, ArgumentParser, add_dask_arguments, orchestration, run
from flows.config import InboxConfig
from flows.parallel import run_each
from flows.settings import redact
from pipeline.errors import InputError
from pipeline.inbox import process as inbox
from pipeline.inbox.manifest import Manifest

if TYPE_CHECKING:
    from flows.tracking import ResolvedModel

# The scoring stack (flows.score, flows.tracking: torch, MLflow; about 8 s) is imported only when there is
# something to score: most scheduled runs find no new file and finish in about a second.

FAILED_STATUSES = ("failed", "quarantined")
# --interval's upper bound: 30 days; rarer runs take --cron (a far larger value overflows the schedule).
INTERVAL_MAX_S = 30 * 86_400


def manifest_of(config: InboxConfig) -> Manifest:
    return Manifest(
        config.manifest_path(),
        lease_s=config.lease_s,
        max_attempts=config.max_attempts,
        backoff_s=config.retry_backoff_s,
    )


def table_scorer(model: "ResolvedModel", config: InboxConfig) -> inbox.Scorer:
    """``scorer(path, out_dir)`` for tables, with the config's flag rule (default: the model's alpha)."""
    from pipeline.calibrate.rules import FlagRule

    det = model.detector
    rule = FlagRule("fdr", config.fdr) if config.fdr is not None else FlagRule("alpha", config.alpha or det.alpha)
    return partial(
        inbox.score_table, det, model_uri=model.uri, model_name=model.name, model_version=model.version, rule=rule
    )


# One scorer factory per item kind of pipeline.inbox.process.KINDS; a new kind (image folders) adds its own.
SCORERS = {"table": table_scorer}


@task(cache_policy=NO_CACHE)
def find_new(config: InboxConfig) -> list[inbox.Item]:
    """The inbox's settled items that the manifest has not seen with this size and mtime."""
    items = inbox.discover(config.inbox, config.kinds, exclude=(config.outbox, config.quarantine_dir()))
    return inbox.pending(items, manifest_of(config), config.min_age_s)


@task(cache_policy=NO_CACHE)
def score_item(
    model: "ResolvedModel", item: inbox.Item, config: InboxConfig, run_id: str | None = None
) -> dict[str, Any]:
    """Claim, score and record one item (see ``pipeline.inbox.process.process_item``)."""
    scorer = SCORERS[item.kind](model, config) if item.kind in SCORERS else _no_scorer(item.kind)
    return inbox.process_item(
        item, manifest_of(config), scorer, config.outbox, config.quarantine_dir(), run_id
    ).to_dict()


def _no_scorer(kind: str) -> inbox.Scorer:
    def refuse(path: Path, out_dir: Path) -> dict[str, Any]:
        raise inbox.Refused(f"{path}: no scorer for items of kind {kind!r} (scorers: {sorted(SCORERS)})")

    return refuse


@flow(name="score-inbox")
def score_inbox(config: InboxConfig) -> list[dict[str, Any]]:
    """Score the inbox's new files; one outcome per file. Fails when a file failed or was quarantined."""
    from prefect.runtime import flow_run

    items = find_new(config)
    if not items:
        get_run_logger().info(f"{config.inbox}: no new files")
        return []
    from flows.score_flow import load_model, publish_summary

    model = load_model(config.model, "table")
    run_id = str(flow_run.id) if flow_run.id else None
    outcomes = run_each(
        score_item, [{"model": model, "item": i, "config": config, "run_id": run_id} for i in items], config
    )
    for o in outcomes:
        if isinstance(o, Exception):  # process_item records every failure of an input: this is a bug
            raise o
    logger = get_run_logger()
    for o in outcomes:
        logger.info(describe(o))
    summaries = [o["summary"] for o in outcomes if o["status"] == "done"]
    errors = [f"{o['path']}: {o['status']}: {o['error']}" for o in outcomes if o["status"] in FAILED_STATUSES]
    if summaries or errors:
        publish_summary(summaries, errors, config.experiment)
    if errors:
        raise InboxFailed(outcomes)
    return outcomes


class InboxFailed(Exception):
    """Some of the inbox's new files failed or were quarantined: every file's outcome."""

    def __init__(self, outcomes: list[dict[str, Any]]) -> None:
        failed = [o for o in outcomes if o["status"] in FAILED_STATUSES]
        super().__init__("; ".join(describe(o) for o in failed))
        self.outcomes = outcomes
        self.exit_code = EXIT_INPUT

    def __reduce__(self) -> tuple[type, tuple[list[dict[str, Any]]]]:  # pickled by Prefect
        return type(self), (self.outcomes,)


def describe(o: dict[str, Any]) -> str:
    """One line per outcome: path, status, and the report or the reason."""
    tail = o["report"] if o["status"] == "done" else o["error"] or ""
    attempt = f" (attempt {o['attempt']})" if o["attempt"] > 1 else ""
    return f"{o['path']}: {o['status']}{attempt}: {tail}".rstrip(": ")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m flows.inbox", description=__doc__.split("\n")[0])
    p.add_argument("--inbox", type=Path, required=True, help="folder watched for new CSV / Parquet files")
    p.add_argument("--outbox", type=Path, required=True, help="report folder (mirrors the inbox's folders)")
    p.add_argument(
        "--model",
        default="models:/vae-anomaly@champion",
        help="MLflow model URI (default: models:/vae-anomaly@champion)",
    )
    p.add_argument("--quarantine", type=Path, default=None, help="failed files go here (<outbox>/quarantine)")
    p.add_argument("--manifest", type=Path, default=None, help="SQLite manifest (<outbox>/manifest.sqlite3)")
    p.add_argument(
        "--min-age",
        dest="min_age_s",
        type=float,
        default=10.0,
        help="seconds a file must be unmodified before it is picked up (10)",
    )
    p.add_argument("--max-attempts", type=int, default=3, help="attempts before quarantine (3)")
    p.add_argument(
        "--retry-backoff",
        dest="retry_backoff_s",
        type=float,
        default=60.0,
        help="seconds before the first retry, doubled after each failure (60)",
    )
    p.add_argument(
        "--lease",
        dest="lease_s",
        type=float,
        default=600.0,
        help="seconds after which a claim that its run stopped renewing is taken over (600)",
    )
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--alpha", type=float, default=None, help="flag rows with conformal p-value <= A")
    rule.add_argument("--fdr", type=float, default=None, help="Benjamini-Hochberg over each file at level Q")
    add_dask_arguments(p, "parallel scoring on Dask (default: one file after another)")
    mode = p.add_argument_group("when (default: --once)")
    mode.add_argument("--once", action="store_true", help="score the new files now, then exit")
    mode.add_argument(
        "--serve",
        action="store_true",
        help="serve the flow on a Prefect server (PREFECT_API_URL) on --interval or --cron",
    )
    mode.add_argument("--interval", type=float, default=None, help="seconds between scheduled runs (implies --serve)")
    mode.add_argument("--cron", default=None, help="cron schedule, e.g. '*/5 * * * *' (implies --serve)")
    mode.add_argument("--name", default="score-inbox", help="deployment name when serving (score-inbox)")
    mode.add_argument(
        "--limit",
        type=int,
        default=1,
        help="when serving, at most N runs at once (1: a run still busy delays the next)",
    )
    return p


CONFIG_FIELDS = tuple(InboxConfig.model_fields)


def config_from(args: Any) -> InboxConfig:
    """The flow's config from parsed arguments; folders made absolute (a served run may start elsewhere)."""
    values = {k: getattr(args, k) for k in CONFIG_FIELDS if hasattr(args, k)}
    for k in ("inbox", "outbox", "quarantine", "manifest"):
        if values.get(k) is not None:
            values[k] = values[k].resolve()
    return InboxConfig(**values)


def schedule_of(args: Any) -> dict[str, Any] | None:
    """``{"interval": S}`` or ``{"cron": EXPR}`` when serving, None for one run.

    Raises:
        InputError: contradicting or missing options.
    """
    if args.once and (args.serve or args.interval is not None or args.cron is not None):
        raise InputError("--once cannot be combined with --serve, --interval or --cron")
    if args.interval is not None and args.cron is not None:
        raise InputError(f"give --interval ({args.interval}) or --cron ({args.cron!r}), not both")
    if args.interval is not None and not 0 < args.interval <= INTERVAL_MAX_S:  # NaN too
        raise InputError(
            f"--interval must be > 0 and at most {INTERVAL_MAX_S} seconds (30 days; use --cron for rarer runs), "
            f"got {args.interval}"
        )
    if args.interval is not None:
        return {"interval": args.interval}
    if args.cron is not None:
        return {"cron": args.cron}
    if args.serve:
        raise InputError("--serve needs a schedule: --interval SECONDS or --cron EXPR")
    return None


def serve(config: InboxConfig, schedule: dict[str, Any], name: str, limit: int = 1) -> int:
    """Serve ``score-inbox`` with ``config`` on ``schedule`` until interrupted (needs a Prefect server).

    Each scheduled run is a subprocess of this one. Overlapping runs would be safe (the manifest), but
    they compete for the same files: ``limit`` caps how many run at once.
    """
    from prefect.settings import get_current_settings
    from prefect.types.entrypoint import EntrypointType

    if not get_current_settings().api.url:
        raise InputError(
            "--serve needs a running Prefect server: start one with `prefect server start` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    if limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit}")
    score_inbox.serve(
        name=name,
        parameters={"config": config.model_dump(mode="json")},
        limit=limit,
        entrypoint_type=EntrypointType.MODULE_PATH,
        **schedule,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        schedule = schedule_of(args)
        config = config_from(args)
        orchestration("flows.inbox")  # imported already: quiets Prefect's console
        if schedule is not None:
            return serve(config, schedule, args.name, args.limit)
        try:
            outcomes = score_inbox(config)
        except InboxFailed as e:
            outcomes = e.outcomes
        counts = {s: sum(o["status"] == s for o in outcomes) for s in dict.fromkeys(o["status"] for o in outcomes)}
        print(f"{config.inbox}: " + (", ".join(f"{n} {s}" for s, n in counts.items()) or "no new files"))
        for o in outcomes:
            if o["status"] == "done":
                print(f"  {o['path']} -> {o['report']}")
        failed = [o for o in outcomes if o["status"] in FAILED_STATUSES]
        for o in failed:
            print(f"python -m flows.inbox: error: {redact(describe(o))}", file=sys.stderr)
        return EXIT_INPUT if failed else 0

    return run("python -m flows.inbox", body)


if __name__ == "__main__":
    sys.exit(main())
