-- A run's `run.finished` audit event is written by the UPDATE that makes the run final
-- (succeeded, failed, rejected, timed_out), in its transaction: a client that sees the
-- run final always finds the event in its trail (apex.agents wrote it after the update
-- before, so a read in between missed it), and every path to a final state is audited.

-- migrate:up
CREATE FUNCTION agent_audit_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO agent_audit_events (run_id, tenant_id, kind, step, data)
    VALUES (NEW.id, NEW.tenant_id, 'run.finished', NULL,
            jsonb_build_object('status', NEW.status, 'error', NEW.error));
    RETURN NEW;
END
$$;
CREATE TRIGGER agent_runs_finished AFTER UPDATE OF status ON agent_runs
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          AND NEW.status IN ('succeeded', 'failed', 'rejected', 'timed_out'))
    EXECUTE FUNCTION agent_audit_finished();

-- migrate:down
DROP TRIGGER agent_runs_finished ON agent_runs;
DROP FUNCTION agent_audit_finished();
