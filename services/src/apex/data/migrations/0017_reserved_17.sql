-- PLACEHOLDER (branch `costs` only): version 0017 belongs to another helper's branch;
-- this empty migration keeps the history without gaps so 0019 applies on this branch
-- alone. Delete this file when merging the branch that owns 0017.

-- migrate:up
SELECT 1;

-- migrate:down
SELECT 1;
