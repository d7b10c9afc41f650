-- The seed's statements (nexes.db.seed), one per named block (nexes.db.sql.load).

-- name: cum_fold
-- The exact customer_stat_cum drift of every customer, applied (not recorded): the fold
-- after a load that deferred the table. The same drift as invariants' customer_stat_cum_differs.
WITH truth AS (SELECT * FROM customer_stat_cum_expected
), kept AS (
    SELECT year, currency, customer_id, before_n, before_a, n01, a01, n02, a02, n03, a03, n04, a04, n05, a05, n06, a06, n07, a07, n08, a08, n09, a09, n10, a10, n11, a11, n12, a12 FROM customer_stat_cum WHERE true
), diff AS (
    SELECT year, currency, customer_id,
           coalesce(t.before_n, 0) - coalesce(k.before_n, 0) AS before_n,
           coalesce(t.before_a, 0) - coalesce(k.before_a, 0) AS before_a,
           coalesce(t.n01, 0) - coalesce(k.n01, 0) AS n01,
           coalesce(t.a01, 0) - coalesce(k.a01, 0) AS a01,
           coalesce(t.n02, 0) - coalesce(k.n02, 0) AS n02,
           coalesce(t.a02, 0) - coalesce(k.a02, 0) AS a02,
           coalesce(t.n03, 0) - coalesce(k.n03, 0) AS n03,
           coalesce(t.a03, 0) - coalesce(k.a03, 0) AS a03,
           coalesce(t.n04, 0) - coalesce(k.n04, 0) AS n04,
           coalesce(t.a04, 0) - coalesce(k.a04, 0) AS a04,
           coalesce(t.n05, 0) - coalesce(k.n05, 0) AS n05,
           coalesce(t.a05, 0) - coalesce(k.a05, 0) AS a05,
           coalesce(t.n06, 0) - coalesce(k.n06, 0) AS n06,
           coalesce(t.a06, 0) - coalesce(k.a06, 0) AS a06,
           coalesce(t.n07, 0) - coalesce(k.n07, 0) AS n07,
           coalesce(t.a07, 0) - coalesce(k.a07, 0) AS a07,
           coalesce(t.n08, 0) - coalesce(k.n08, 0) AS n08,
           coalesce(t.a08, 0) - coalesce(k.a08, 0) AS a08,
           coalesce(t.n09, 0) - coalesce(k.n09, 0) AS n09,
           coalesce(t.a09, 0) - coalesce(k.a09, 0) AS a09,
           coalesce(t.n10, 0) - coalesce(k.n10, 0) AS n10,
           coalesce(t.a10, 0) - coalesce(k.a10, 0) AS a10,
           coalesce(t.n11, 0) - coalesce(k.n11, 0) AS n11,
           coalesce(t.a11, 0) - coalesce(k.a11, 0) AS a11,
           coalesce(t.n12, 0) - coalesce(k.n12, 0) AS n12,
           coalesce(t.a12, 0) - coalesce(k.a12, 0) AS a12,
           coalesce(t.before_n + t.n12, 0) AS expected, coalesce(k.before_n + k.n12, 0) AS found,
           coalesce((t.before_a + t.a12) / 100.0, 0) AS expected_amount, coalesce((k.before_a + k.a12) / 100.0, 0) AS found_amount
    FROM truth AS t FULL JOIN kept AS k USING (year, currency, customer_id)
), drift AS (
    SELECT * FROM diff WHERE before_n <> 0 OR before_a <> 0 OR n01 <> 0 OR a01 <> 0 OR n02 <> 0 OR a02 <> 0 OR n03 <> 0 OR a03 <> 0 OR n04 <> 0 OR a04 <> 0 OR n05 <> 0 OR a05 <> 0 OR n06 <> 0 OR a06 <> 0 OR n07 <> 0 OR a07 <> 0 OR n08 <> 0 OR a08 <> 0 OR n09 <> 0 OR a09 <> 0 OR n10 <> 0 OR a10 <> 0 OR n11 <> 0 OR a11 <> 0 OR n12 <> 0 OR a12 <> 0
)
, fixed AS (
    INSERT INTO customer_stat_cum AS c (year, currency, customer_id, before_n, before_a, n01, a01, n02, a02, n03, a03, n04, a04, n05, a05, n06, a06, n07, a07, n08, a08, n09, a09, n10, a10, n11, a11, n12, a12)
    SELECT year, currency, customer_id, before_n, before_a, n01, a01, n02, a02, n03, a03, n04, a04, n05, a05, n06, a06, n07, a07, n08, a08, n09, a09, n10, a10, n11, a11, n12, a12 FROM drift ORDER BY year, customer_id, currency
    ON CONFLICT (year, currency, customer_id) DO UPDATE SET
        before_n = c.before_n + excluded.before_n,
        before_a = c.before_a + excluded.before_a,
        n01 = c.n01 + excluded.n01,
        a01 = c.a01 + excluded.a01,
        n02 = c.n02 + excluded.n02,
        a02 = c.a02 + excluded.a02,
        n03 = c.n03 + excluded.n03,
        a03 = c.a03 + excluded.a03,
        n04 = c.n04 + excluded.n04,
        a04 = c.a04 + excluded.a04,
        n05 = c.n05 + excluded.n05,
        a05 = c.a05 + excluded.a05,
        n06 = c.n06 + excluded.n06,
        a06 = c.a06 + excluded.a06,
        n07 = c.n07 + excluded.n07,
        a07 = c.a07 + excluded.a07,
        n08 = c.n08 + excluded.n08,
        a08 = c.a08 + excluded.a08,
        n09 = c.n09 + excluded.n09,
        a09 = c.a09 + excluded.a09,
        n10 = c.n10 + excluded.n10,
        a10 = c.a10 + excluded.a10,
        n11 = c.n11 + excluded.n11,
        a11 = c.a11 + excluded.a11,
        n12 = c.n12 + excluded.n12,
        a12 = c.a12 + excluded.a12
)
SELECT count(*) FROM drift;
