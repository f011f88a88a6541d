-- The latest version of each finding in a postauth findings table (docs/findings-lifecycle.md).
-- postauth appends one row per version (first emission, then each update, same finding_id);
-- the latest is the one with the highest `updates`, then `occurrences`.
-- Replace PROJECT.DATASET.findings with the table given to --sink bq://PROJECT:DATASET.findings.
CREATE OR REPLACE VIEW `PROJECT.DATASET.findings_latest` AS
SELECT * EXCEPT (version_rank)
FROM (
  SELECT f.*,
         ROW_NUMBER() OVER (PARTITION BY finding_id
                            ORDER BY IFNULL(updates, 0) DESC, occurrences DESC, window_end DESC) AS version_rank
  FROM `PROJECT.DATASET.findings` AS f
)
WHERE version_rank = 1;

-- Or keep a compacted table instead of a view (e.g. from a scheduled query every few minutes):
-- MERGE `PROJECT.DATASET.findings_compacted` T
-- USING (SELECT * FROM `PROJECT.DATASET.findings_latest`) S
-- ON T.finding_id = S.finding_id
-- WHEN MATCHED AND IFNULL(S.updates, 0) > IFNULL(T.updates, 0)
--              OR (IFNULL(S.updates, 0) = IFNULL(T.updates, 0) AND S.occurrences > T.occurrences)
--   THEN UPDATE SET ... -- every column from S
-- WHEN NOT MATCHED THEN INSERT ROW;

-- Pages only (first emissions at medium or above and severity raises to medium or above):
-- SELECT * FROM `PROJECT.DATASET.findings` WHERE page ORDER BY window_end;
