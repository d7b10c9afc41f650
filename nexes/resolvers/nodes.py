"""node(id) and nodes(ids): any object by its global id, through the request's loaders."""

from __future__ import annotations

import asyncio

import strawberry

from nexes.errors import bad_input
from nexes.resolvers.catalog import stock_items_by_id
from nexes.resolvers.context import Info
from nexes.resolvers.ids import decode_any_global_id
from nexes.resolvers.imports import import_job_by_key
from nexes.resolvers.orders import customers_by_id, orders_by_id
from nexes.schema.types import Node

MAX_NODES = 100


async def node(info: Info, id: strawberry.ID) -> Node | None:
    decoded = decode_any_global_id(id)
    if decoded is None:
        raise bad_input(f"id {id[:64]!r} is not a global id", field="id")
    type_name, key = decoded
    loaders = info.context.loaders
    if type_name == "ServiceOrder":
        return await loaders.of(orders_by_id, None).load(key)
    if type_name == "Customer":
        return await loaders.of(customers_by_id, None).load(key)
    if type_name == "StockItem":
        return await loaders.of(stock_items_by_id, None).load(key)
    if type_name == "ImportJob":
        return await import_job_by_key(info, key)
    raise bad_input(f"id {id[:64]!r} is not the global id of a known type", field="id")


async def nodes(info: Info, ids: list[strawberry.ID]) -> list[Node | None]:
    if len(ids) > MAX_NODES:
        raise bad_input(f"nodes takes at most {MAX_NODES} ids, not {len(ids)}", field="ids")
    return list(await asyncio.gather(*(node(info, i) for i in ids)))
