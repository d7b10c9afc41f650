"""Import jobs in GraphQL: importJob, importJobs, startImport, cancelImport (in progress)."""

from __future__ import annotations

import strawberry


@strawberry.type
class ImportQuery:
    @strawberry.field(description="Placeholder until import jobs land.")
    def import_jobs_ready(self) -> bool:
        return False


@strawberry.type
class ImportMutation:
    @strawberry.mutation(description="Placeholder until import jobs land.")
    def import_ping(self) -> bool:
        return False
