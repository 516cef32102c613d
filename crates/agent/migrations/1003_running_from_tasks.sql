-- An agent's running tasks are counted from `tasks` when read, not kept in `agents`: keeping the
-- count made every assignment and completion update (and lock) its holder's row, one hot row per
-- agent that all of its tasks' writes queued on. The partial index holds only held tasks, so the
-- count is an index-only lookup of the agent's few.
ALTER TABLE agents DROP COLUMN running_tasks;
CREATE INDEX tasks_held ON tasks (tenant_id, holder) WHERE state = 'assigned';
