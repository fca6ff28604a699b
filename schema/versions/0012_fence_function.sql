-- Revision 0012, frozen.
-- The epoch fence as a function, so that a fenced side effect can be sent with its fence in
-- one message (one round trip, one implicit transaction) instead of BEGIN, a check, the
-- effect and COMMIT (issue 18: a far owner pays each round trip 100-250 ms). It takes the
-- same share lock on the service's row as `workers.fencing.check_fence`, so a change of
-- owner still waits for the effect to commit, or the effect sees the new owner and the
-- whole message is rolled back. Expand only: a new function.
CREATE FUNCTION failover_fence(
    p_service TEXT,
    p_epoch BIGINT,
    p_node TEXT,
    p_incarnation UUID,
    p_owner_only BOOLEAN,
    p_starting BOOLEAN
) RETURNS BOOLEAN
LANGUAGE plpgsql AS $$
DECLARE
    v_handover_since TIMESTAMPTZ;
    v_handover_to TEXT;
    v_owner TEXT;
    v_epoch BIGINT;
BEGIN
    SELECT s.handover_since, s.handover_to INTO v_handover_since, v_handover_to
    FROM service_status AS s JOIN server_registry AS r ON r.id = s.service_registry_id
    WHERE s.service_type = p_service AND s.epoch = p_epoch AND r.stopped_at IS NULL
      AND r.last_heartbeat_at + r.lease_timeout_s * interval '1 second' > clock_timestamp()
      AND (NOT p_owner_only OR (r.node_name = p_node AND r.incarnation = p_incarnation))
    FOR SHARE OF s;
    IF NOT FOUND THEN
        SELECT r.node_name, s.epoch INTO v_owner, v_epoch
        FROM service_status AS s LEFT JOIN server_registry AS r ON r.id = s.service_registry_id
        WHERE s.service_type = p_service;
        RAISE EXCEPTION USING ERRCODE = 'FOST1', MESSAGE = format(
            '%s is not the owner of %s at epoch %s with a fresh lease (owner %s, epoch %s)',
            p_node, p_service, p_epoch, COALESCE(v_owner, 'nobody'), v_epoch);
    END IF;
    IF p_starting AND v_handover_since IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'FOHO1', MESSAGE = format(
            '%s is handing over to %s: it starts nothing new', p_service,
            COALESCE(v_handover_to, 'nobody (a graceful stop)'));
    END IF;
    RETURN true;
END
$$;

-- Raised by a message that finds something busy (another scan of a hot folder): it stops
-- there and is rolled back whole.
CREATE FUNCTION failover_busy(p_what TEXT) RETURNS BOOLEAN
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'FOBZ1', MESSAGE = p_what || ' is busy';
END
$$;
