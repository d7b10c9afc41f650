"""node(id) and nodes(ids): any object by its global id, through the request's loaders."""

from __future__ import annotations

import asyncio
from typing import Any

import strawberry

from nexes.errors import bad_input
from nexes.resolvers.context import Context
from nexes.resolvers.ids import decode_any_global_id
from nexes.schema.types import Node

Info = strawberry.Info[Context, Any]
MAX_NODES = 100


async def node(info: Info, id: strawberry.ID) -> Node | None:
    decoded = decode_any_global_id(id)
    if decoded is None:
        raise bad_input(f"id {id[:64]!r} is not a global id", field="id")
    type_name, key = decoded
    loaders = info.context.loaders
    if type_name == "ServiceOrder":
        return await loaders.service_order_by_id.load(key)
    if type_name == "Customer":
        return await loaders.customer_by_id.load(key)
    if type_name == "StockItem":
        return await loaders.stock_item_by_id.load(key)
    if type_name == "ImportJob":
        from nexes.resolvers.imports import import_job_by_key

        return await import_job_by_key(info, key)
    raise bad_input(f"id {id[:64]!r} is not the global id of a known type", field="id")


async def nodes(info: Info, ids: list[strawberry.ID]) -> list[Node | None]:
    if len(ids) > MAX_NODES:
        raise bad_input(f"nodes takes at most {MAX_NODES} ids, not {len(ids)}", field="ids")
    return list(await asyncio.gather(*(node(info, i) for i in ids)))
