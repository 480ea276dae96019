-- Progress of `ironfhir import`, so that an interrupted import continues where it stopped
-- instead of writing the same resources again (src/import.rs).
--
-- One row per input file version: `file_key` is the absolute path, the size and the modification
-- time of the file, so an edited file is a new key and is imported from its start. The row is
-- written in the same database transaction as each batch of resources, so after a crash it
-- names exactly the part of the file that is committed: NDJSON continues at `bytes_done`
-- (`lines_done` numbers the lines in error reports), and a file with `completed` is skipped.
-- Bundles are one unit: their row appears with `completed` once the whole Bundle is written.
CREATE TABLE import_progress (
    file_key   text        PRIMARY KEY,
    bytes_done bigint      NOT NULL DEFAULT 0,
    lines_done bigint      NOT NULL DEFAULT 0,
    completed  boolean     NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()   -- for operators: when the file last advanced
);
