"""A generated import CSV: valid orders, 1 to 5 lines each, deterministic for a seed.

    python -m bench.gen_import OUT.csv ORDERS [--first N] [--prefix IMP] [--seed S]

Customer codes and SKUs are the ones the demo seed creates (C000001.., SKU-00001..).
"""

from __future__ import annotations

import argparse
import csv
import random
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from nexes.imports.parse import COLUMNS  # the header of docs/import-format.md

# Weights out of 100: most orders are live or done, a few drafts and cancellations.
STATUSES = ("OPEN",) * 35 + ("IN_PROGRESS",) * 25 + ("COMPLETED",) * 30 + ("DRAFT",) * 5 + ("CANCELLED",) * 5
CURRENCIES = ("EUR",) * 6 + ("USD",) * 3 + ("GBP",)
OFFSETS = tuple(timezone(timedelta(hours=h)) for h in (0, 1, 2, -5, 5.5))
DESCRIPTIONS = (
    "Boiler service",
    "Annual inspection",
    "Replace filter, check pressure",  # a comma: this one is quoted in the file
    "Emergency call-out",
    'Install "smart" thermostat',  # quotes: doubled inside a quoted field
    "",
)


def generate_csv(
    path: Path,
    orders: int,
    *,
    first: int = 1,
    prefix: str = "IMP",
    customers: int = 200,
    skus: int = 50,
    start: datetime | None = None,
    days: int = 300,
    seed: int = 0,
) -> int:
    """Write an import file of `orders` orders to `path`; return the number of data lines."""
    rng = random.Random(seed)
    if start is None:
        start = datetime.now(UTC) - timedelta(days=days + 1)
    base = int(start.timestamp())
    span = days * 86_400
    customer_codes = [f"C{n:06d}" for n in range(1, customers + 1)]
    sku_codes = [f"SKU-{n:05d}" for n in range(1, skus + 1)]
    prices = [f"{(n * 37) % 400 + 5}.{(n * 13) % 100:02d}" for n in range(1, skus + 1)]
    line_numbers = [str(n) for n in range(1, 6)]
    quantities = [str(n) for n in range(1, 21)]
    lines = 0
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        for n in range(first, first + orders):
            created = datetime.fromtimestamp(base + int(rng.random() * span), rng.choice(OFFSETS)).isoformat()
            head = [
                f"{prefix}-{n:08d}",
                created,
                rng.choice(customer_codes),
                rng.choice(STATUSES),
                rng.choice(DESCRIPTIONS),
                rng.choice(CURRENCIES),
            ]
            count = rng.randint(1, 5)
            rows = []
            for line_no in line_numbers[:count]:
                k = int(rng.random() * skus)
                rows.append([*head, line_no, sku_codes[k], rng.choice(quantities), prices[k]])
            writer.writerows(rows)
            lines += count
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("orders", type=int)
    parser.add_argument("--first", type=int, default=1)
    parser.add_argument("--prefix", default="IMP")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    began = time.perf_counter()
    lines = generate_csv(args.out, args.orders, first=args.first, prefix=args.prefix, seed=args.seed)
    print(f"{args.orders} orders, {lines} lines in {time.perf_counter() - began:.1f}s")


if __name__ == "__main__":
    main()
