-- Booking: no two active bookings of one resource ever overlap.

-- Value rules live in domains rather than table CHECK constraints: Postgres
-- caches a domain's checks for the session, while a table CHECK is re-read
-- and re-planned on every single-row INSERT (about a sixth of book()'s time).
CREATE DOMAIN integrity.booking_status AS text
    CONSTRAINT booking_status_check CHECK (VALUE IN ('booked', 'cancelled'));
COMMENT ON DOMAIN integrity.booking_status IS
'Status of a booking: booked (holds its slot) or cancelled (soft-deleted).';
CREATE DOMAIN integrity.booking_span AS tstzrange
    CONSTRAINT booking_span_check CHECK (
        NOT pg_catalog.isempty(VALUE)
        AND NOT pg_catalog.lower_inf(VALUE) AND NOT pg_catalog.upper_inf(VALUE)
        AND pg_catalog.lower_inc(VALUE) AND NOT pg_catalog.upper_inc(VALUE));
COMMENT ON DOMAIN integrity.booking_span IS
'A booked span: a non-empty, finite [start, end) tstzrange.';

CREATE TABLE integrity.bookings (
    id               uuid        NOT NULL DEFAULT pg_catalog.gen_random_uuid() PRIMARY KEY,
    org_id           uuid        NOT NULL,
    resource_id      uuid        NOT NULL,
    contact_id       uuid,
    during           integrity.booking_span NOT NULL,
    status           integrity.booking_status NOT NULL DEFAULT 'booked',
    metadata         jsonb       NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    cancelled_at     timestamptz,
    cancel_reason    text,
    rescheduled_from uuid,
    CONSTRAINT bookings_cancelled_check CHECK ((status = 'cancelled') = (cancelled_at IS NOT NULL)),
    -- The last line of defence: whatever path a row takes into this table,
    -- two active bookings of one resource cannot overlap.
    CONSTRAINT bookings_no_overlap
        EXCLUDE USING gist (org_id WITH =, resource_id WITH =, during WITH &&)
        WHERE (status = 'booked')
);

COMMENT ON TABLE integrity.bookings IS
'Bookings of a resource (staff member, room, …) per tenant. The exclusion constraint bookings_no_overlap guarantees that active (status = booked) bookings of one (org_id, resource_id) never overlap. Write through integrity.book / cancel / reschedule.';
COMMENT ON COLUMN integrity.bookings.id IS 'Booking id, returned by integrity.book as booking_id.';
COMMENT ON COLUMN integrity.bookings.org_id IS 'Tenant. Row-level security scopes rows to integrity.org_id when the session sets it.';
COMMENT ON COLUMN integrity.bookings.resource_id IS 'What is booked: a staff member, a room, a machine. Bookings serialise per (org_id, resource_id).';
COMMENT ON COLUMN integrity.bookings.contact_id IS 'Who booked (optional).';
COMMENT ON COLUMN integrity.bookings.during IS 'The booked time, [starts_at, ends_at).';
COMMENT ON COLUMN integrity.bookings.status IS 'booked (active, holds the slot) or cancelled (soft-deleted, frees the slot).';
COMMENT ON COLUMN integrity.bookings.metadata IS 'Caller''s own data about the booking (a JSON object).';
COMMENT ON COLUMN integrity.bookings.created_at IS 'When the booking was made.';
COMMENT ON COLUMN integrity.bookings.updated_at IS 'Last change of status.';
COMMENT ON COLUMN integrity.bookings.cancelled_at IS 'When it was cancelled (set exactly when status = cancelled).';
COMMENT ON COLUMN integrity.bookings.cancel_reason IS 'Why it was cancelled; ''rescheduled'' when integrity.reschedule replaced it.';
COMMENT ON COLUMN integrity.bookings.rescheduled_from IS 'For a booking made by integrity.reschedule: the booking it replaced.';
COMMENT ON CONSTRAINT bookings_cancelled_check ON integrity.bookings IS
'cancelled_at is set exactly when the booking is cancelled.';
COMMENT ON CONSTRAINT bookings_no_overlap ON integrity.bookings IS
'No two active bookings of one (org_id, resource_id) overlap, whoever writes the table.';

CREATE TABLE integrity.booking_events (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    booking_id  uuid        NOT NULL,
    org_id      uuid        NOT NULL,
    event       text        NOT NULL,
    during      tstzrange   NOT NULL,
    details     jsonb       NOT NULL DEFAULT '{}',
    actor       text        NOT NULL DEFAULT CURRENT_USER,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT booking_events_event_check CHECK (event IN ('cancelled', 'rescheduled'))
);
CREATE INDEX booking_events_booking_idx ON integrity.booking_events (booking_id);

COMMENT ON TABLE integrity.booking_events IS
'Audit trail of changes to bookings after they were made: cancellations and reschedules, written in the same transaction as the change.';
COMMENT ON COLUMN integrity.booking_events.id IS 'Event id, in the order events were written.';
COMMENT ON COLUMN integrity.booking_events.booking_id IS 'The booking that changed (for a reschedule: the old booking).';
COMMENT ON COLUMN integrity.booking_events.org_id IS 'Tenant of the booking.';
COMMENT ON COLUMN integrity.booking_events.event IS 'cancelled or rescheduled.';
COMMENT ON COLUMN integrity.booking_events.during IS 'The booking''s time before the change.';
COMMENT ON COLUMN integrity.booking_events.details IS 'cancelled: {"reason"}; rescheduled: {"new_booking_id","starts_at","ends_at"}.';
COMMENT ON COLUMN integrity.booking_events.actor IS 'Database role that made the change.';
COMMENT ON COLUMN integrity.booking_events.created_at IS 'When the change was made.';

-- Tenant scoping: when the session sets integrity.org_id, a non-owner role
-- sees and writes only that tenant's rows. Unset means no scoping.
ALTER TABLE integrity.bookings ENABLE ROW LEVEL SECURITY;
CREATE POLICY bookings_org_scope ON integrity.bookings
    USING ((SELECT integrity.current_org()) IS NULL OR org_id = (SELECT integrity.current_org()));
COMMENT ON POLICY bookings_org_scope ON integrity.bookings IS
'Rows of the tenant in integrity.org_id only, when that GUC is set.';
ALTER TABLE integrity.booking_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY booking_events_org_scope ON integrity.booking_events
    USING ((SELECT integrity.current_org()) IS NULL OR org_id = (SELECT integrity.current_org()));
COMMENT ON POLICY booking_events_org_scope ON integrity.booking_events IS
'Rows of the tenant in integrity.org_id only, when that GUC is set.';

-- pg_dump keeps the rows of extension tables only when they are registered.
SELECT pg_catalog.pg_extension_config_dump('integrity.bookings', '');
SELECT pg_catalog.pg_extension_config_dump('integrity.booking_events', '');
SELECT pg_catalog.pg_extension_config_dump('integrity.booking_events_id_seq', '');
