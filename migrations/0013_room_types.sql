-- Room types (docs/api.md "Room types"): a property with several identical
-- units, booked by count. The tables below belong to the `inventory`
-- projection (projections/src/inventory.rs) and are rebuilt by its replay.

-- The room type a booking takes a unit of (`views` projection).
ALTER TABLE bookings_view ADD COLUMN room_type_id uuid;

-- Claims on a room type overlap by design (three bookings of a 3-unit
-- Double share their nights), so the EXCLUSION constraint now holds only
-- for claims on the single unit; room-type claims are counted per night in
-- inventory_nights instead. `units` is what the claim takes (a block may
-- close several).
ALTER TABLE inventory_ranges ADD COLUMN room_type_id uuid;
ALTER TABLE inventory_ranges ADD COLUMN units integer NOT NULL DEFAULT 1 CHECK (units >= 1);
-- Found by kind rather than name: a replay's copy (CREATE TABLE ... LIKE)
-- names its constraints afresh.
DO $$
DECLARE
    excl name;
BEGIN
    FOR excl IN SELECT conname FROM pg_constraint
                 WHERE conrelid = 'inventory_ranges'::regclass AND contype = 'x'
    LOOP
        EXECUTE format('ALTER TABLE inventory_ranges DROP CONSTRAINT %I', excl);
    END LOOP;
END $$;
-- Under the name PostgreSQL gives it, which is also what a replay's copy
-- (CREATE TABLE ... LIKE) calls it.
ALTER TABLE inventory_ranges ADD CONSTRAINT inventory_ranges_property_id_during_excl
    EXCLUDE USING gist (property_id WITH =, during WITH &&) WHERE (room_type_id IS NULL);

-- The room types, as the API lists them.
CREATE TABLE inventory_room_types (
    room_type_id uuid PRIMARY KEY,
    agency_id    uuid        NOT NULL,
    property_id  uuid        NOT NULL,
    name         text        NOT NULL,
    units        integer     NOT NULL CHECK (units >= 1),
    external_ref text,
    version      bigint      NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    position     bigint      NOT NULL
);
CREATE INDEX ON inventory_room_types (agency_id, property_id);

-- Units held per room type and night; a night no claim holds has no row.
-- The CHECK is invariant 1's second line of defence for room types, as the
-- EXCLUSION constraint is for single units: a projection that would break
-- it has found a bug, and the property is parked.
CREATE TABLE inventory_nights (
    room_type_id uuid    NOT NULL,
    night        date    NOT NULL,
    agency_id    uuid    NOT NULL,
    property_id  uuid    NOT NULL,
    units        integer NOT NULL,
    taken        integer NOT NULL CHECK (taken >= 0),
    PRIMARY KEY (room_type_id, night),
    CONSTRAINT inventory_nights_capacity CHECK (taken <= units)
);
CREATE INDEX ON inventory_nights (agency_id, night);

ALTER TABLE inventory_room_types OWNER TO ledger_projector;
ALTER TABLE inventory_nights OWNER TO ledger_projector;
SELECT ledger_secure_read_model('inventory_room_types');
SELECT ledger_secure_read_model('inventory_nights');
