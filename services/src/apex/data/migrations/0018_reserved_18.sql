-- PLACEHOLDER (branch `costs` only): version 0018 belongs to another helper's branch;
-- this empty migration keeps the history without gaps so 0019 applies on this branch
-- alone. Delete this file when merging the branch that owns 0018.

-- migrate:up
SELECT 1;

-- migrate:down
SELECT 1;
