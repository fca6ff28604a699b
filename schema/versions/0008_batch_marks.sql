-- A handler batch is marked with an id of its own beside its incarnation, so a start or an
-- outcome retried after an ambiguous COMMIT finds its own marks (issue 16, item 5). Expand
-- only: a node of the previous version never names this column.

ALTER TABLE folder_file ADD COLUMN handler_batch UUID;
