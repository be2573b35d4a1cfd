-- The PL/pgSQL baseline for bench/triggers.rs: the same four rules as
-- integrity's trigger functions, written as an application team would,
-- one trigger function per rule, on schema plpgsql's copies of the tables.

CREATE FUNCTION plpgsql.tg_default_direction() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.direction IS NULL THEN NEW.direction := 'inbound'; END IF;
  RETURN NEW;
END $$;

CREATE FUNCTION plpgsql.tg_link_status() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE want text := CASE WHEN NEW.customer_id IS NOT NULL THEN 'linked' ELSE 'unlinked' END;
BEGIN
  IF NEW.customer_link_status IS DISTINCT FROM want THEN NEW.customer_link_status := want; END IF;
  RETURN NEW;
END $$;

CREATE FUNCTION plpgsql.tg_implies_booked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.session_outcome = 'appointment_booked' AND NEW.appointment_made IS DISTINCT FROM true THEN
    NEW.appointment_made := true;
  END IF;
  RETURN NEW;
END $$;

-- Lock the parent, then recount its live children (the same protocol as
-- integrity.tg_child_flag, so both are correct under concurrency).
CREATE FUNCTION plpgsql.recount(p bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
  PERFORM 1 FROM plpgsql.calls WHERE id = p FOR NO KEY UPDATE;
  SELECT count(*) INTO n FROM plpgsql.appointments WHERE call_id = p AND cancelled_at IS NULL;
  UPDATE plpgsql.calls SET appointment_made = n > 0, appointment_count = n
   WHERE id = p AND (appointment_made IS DISTINCT FROM (n > 0) OR appointment_count IS DISTINCT FROM n);
END $$;

CREATE FUNCTION plpgsql.tg_child_flag() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.call_id IS NOT NULL THEN
    PERFORM plpgsql.recount(OLD.call_id);
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.call_id IS NOT NULL
     AND (TG_OP = 'INSERT' OR NEW.call_id IS DISTINCT FROM OLD.call_id) THEN
    PERFORM plpgsql.recount(NEW.call_id);
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER calls_direction BEFORE INSERT ON plpgsql.calls FOR EACH ROW
    EXECUTE FUNCTION plpgsql.tg_default_direction();
CREATE TRIGGER calls_link BEFORE INSERT OR UPDATE ON plpgsql.calls FOR EACH ROW
    EXECUTE FUNCTION plpgsql.tg_link_status();
CREATE TRIGGER calls_booked BEFORE INSERT OR UPDATE ON plpgsql.calls FOR EACH ROW
    EXECUTE FUNCTION plpgsql.tg_implies_booked();
CREATE TRIGGER appointments_flag AFTER INSERT OR UPDATE OR DELETE ON plpgsql.appointments
    FOR EACH ROW EXECUTE FUNCTION plpgsql.tg_child_flag();
