-- Properties a projection could not apply an event of. A parked property's
-- events wait (in order, from `position` on) while the projection goes on
-- with every other property; `POST /ops/projections/{name}/parked/retry`
-- applies them again once the cause is removed. `projection` is the
-- checkpoint name: a live projection ('inventory') or a replay's copy
-- ('inventory@replay'), whose rows replace the live ones when it swaps in.
CREATE TABLE projection_parked (
    projection  text        NOT NULL,
    property_id uuid        NOT NULL,
    agency_id   uuid        NOT NULL,
    -- The first event of the property that is not applied.
    position    bigint      NOT NULL,
    error       text        NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, property_id)
);
