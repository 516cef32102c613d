-- The dispatcher's sweeper, across tenants: leases that lapsed, and deadlines that passed.
-- Partial, so each holds only what can still lapse or time out.
CREATE INDEX tasks_leases ON tasks (lease_until) WHERE state = 'assigned';
CREATE INDEX tasks_deadlines ON tasks (deadline) WHERE state IN ('queued', 'assigned') AND deadline IS NOT NULL;
