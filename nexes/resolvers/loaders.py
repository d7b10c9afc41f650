"""Per-request DataLoaders for what the connection prefetches cannot reach: node and nodes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection
from strawberry.dataloader import DataLoader

from nexes.db import catalog
from nexes.db import orders as orders_db
from nexes.db.connect.router import Router
from nexes.schema.types import Customer, ServiceOrder, StockItem


class Loaders:
    """`XByYLoader`s of one request; each batch is one statement per table."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.service_order_by_id: DataLoader[int, ServiceOrder | None] = DataLoader(self._orders)
        self.customer_by_id: DataLoader[int, Customer | None] = DataLoader(self._customers)
        self.stock_item_by_id: DataLoader[int, StockItem | None] = DataLoader(self._stock_items)
        self._orders_by_customer: dict[Any, DataLoader[int, Any]] = {}

    def service_orders_by_customer(self, spec: Any) -> DataLoader[int, Any]:
        """One loader per page shape (a PageSpec): sibling customers' pages load together."""
        loader = self._orders_by_customer.get(spec)
        if loader is None:
            from nexes.resolvers.orders import fetch_customers_pages

            async def load(customer_ids: Sequence[int]) -> list[Any]:
                return await self.router.read(lambda conn: fetch_customers_pages(conn, spec, customer_ids))

            loader = self._orders_by_customer[spec] = DataLoader(load)
        return loader

    async def _orders(self, ids: Sequence[int]) -> list[ServiceOrder | None]:
        from nexes.resolvers.orders import hydrate

        async def work(conn: AsyncConnection[Any]) -> dict[int, ServiceOrder]:
            rows = await orders_db.orders_by_id(conn, ids)
            nodes = await hydrate(conn, rows, customers=True, lines=True, archived=True)
            return {row.id: node for row, node in zip(rows, nodes, strict=True)}

        found = await self.router.read(work)
        return [found.get(i) for i in ids]

    async def _customers(self, ids: Sequence[int]) -> list[Customer | None]:
        from nexes.resolvers.orders import to_customer

        rows = await self.router.read(lambda conn: catalog.customers_by_id(conn, ids))
        found = {r.id: to_customer(r) for r in rows}
        return [found.get(i) for i in ids]

    async def _stock_items(self, ids: Sequence[int]) -> list[StockItem | None]:
        from nexes.resolvers.catalog import to_stock_item

        rows = await self.router.read(lambda conn: catalog.stock_items_by_id(conn, ids))
        found = {r.id: to_stock_item(r) for r in rows}
        return [found.get(i) for i in ids]
