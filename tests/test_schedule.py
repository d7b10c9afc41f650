"""The schedule: the scheduler registers every periodic job on its cadence, each sending the
actor docs/operations.md ("The schedule") names. Removing a line of it fails here."""

from __future__ import annotations

from apscheduler.schedulers.background import BackgroundScheduler

from nexes.jobs.scheduler import add_periodic_jobs
from nexes.settings import Settings

# id: (actor, trigger as APScheduler prints it)
SCHEDULE = {
    "partitions": ("maintain_partitions", "cron[hour='3', minute='0']"),
    "partitions-at-start": ("maintain_partitions", "date"),
    "reconcile": ("reconcile_stats", "cron[hour='2', minute='30']"),
    "archive": ("archive_quarters", "cron[hour='3', minute='30']"),
    "import-sweep": ("sweep_imports", "interval[0:00:10]"),
    "import-purge": ("purge_imports", "cron[minute='15']"),
    "search-sweep": ("sweep_search", "interval[0:00:02]"),
}


def test_the_scheduler_registers_every_periodic_job_on_its_cadence(settings: Settings) -> None:
    from dataclasses import replace

    scheduler = BackgroundScheduler(timezone="UTC")  # never started: nothing is sent
    add_periodic_jobs(scheduler, replace(settings, import_sweep_seconds=10.0, search_sweep_seconds=2.0))
    found = {}
    for job in scheduler.get_jobs():
        trigger = str(job.trigger)
        found[job.id] = (job.func.__self__.actor_name, "date" if trigger.startswith("date") else trigger)
    assert found == SCHEDULE
